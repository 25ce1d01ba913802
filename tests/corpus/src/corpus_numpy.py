"""numpy for the corpus: linear algebra (OpenBLAS threads) and an FFT."""

import numpy as np


def main():
    a = np.array([[3.0, 1.0], [1.0, 2.0]])
    x = np.linalg.solve(a, np.array([9.0, 8.0]))
    big = np.random.default_rng(0).standard_normal((300, 300))
    product = big @ big.T
    spectrum = np.abs(np.fft.rfft(np.sin(np.linspace(0, 8 * np.pi, 64, endpoint=False))))
    print("numpy", np.__version__.split(".")[0], "solve", x.round(6).tolist(),
          "symmetric", bool(np.allclose(product, product.T)),
          "fft peak", int(spectrum.argmax()))
    return 0
