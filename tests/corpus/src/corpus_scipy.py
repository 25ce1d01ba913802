"""scipy for the corpus: optimisation, integration and a sparse solve."""

import numpy as np
from scipy import integrate, optimize, sparse
from scipy.sparse.linalg import spsolve


def main():
    best = optimize.minimize(optimize.rosen, [1.3, 0.7, 0.8], method="BFGS")
    area, _ = integrate.quad(np.sin, 0, np.pi)
    matrix = sparse.diags([1.0, 2.0, 4.0]).tocsr()
    print("scipy minimum", np.round(best.x, 3).tolist(), "integral", round(area, 6),
          "sparse", spsolve(matrix, np.array([1.0, 2.0, 4.0])).tolist())
    return 0
