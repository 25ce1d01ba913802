"""Pillow for the corpus: draw an image, save it as PNG in the current directory, read
it back and make a JPEG thumbnail."""

from PIL import Image, ImageDraw, ImageFilter


def main():
    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 40, 30), fill=(200, 30, 30))
    image.filter(ImageFilter.GaussianBlur(1)).save("drawing.png")
    with Image.open("drawing.png") as reread:
        reread.thumbnail((32, 32))
        reread.save("thumb.jpg", quality=80)
        print("pillow", reread.format or "PNG", reread.size, image.getpixel((20, 20)))
    return 0
