"""Opening images: every PIL mode to RGB, EXIF orientation, the pixel limit, corrupt and missing files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wings.data.images import (
    ImageLoadError,
    fit_within,
    image_header,
    load_image,
    pad_to_square,
    pixel_statistics,
    to_rgb,
)


def saved(tmp_path, image: Image.Image, name: str, **options) -> str:
    path = tmp_path / name
    image.save(path, **options)
    return str(path)


def pixel(image: Image.Image, xy=(0, 0)) -> tuple:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    image = load_image(saved(tmp_path, rgba, "a.png"))
    assert pixel(image) == (255, 255, 255) and pixel(image, (1, 1)) == (255, 0, 0)
    assert pixel(to_rgb(Image.new("LA", (2, 2), (0, 0)))) == (255, 255, 255)
    assert pixel(to_rgb(Image.new("LA", (2, 2), (0, 255)))) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    image = load_image(saved(tmp_path, palette, "p.png", transparency=0))
    assert pixel(image) == (255, 255, 255) and pixel(image, (1, 1)) == (0, 255, 0)


def test_greyscale_cmyk_and_sixteen_bit(tmp_path):
    assert pixel(load_image(saved(tmp_path, Image.new("L", (2, 2), 7), "l.png"))) == (7, 7, 7)
    assert (
        pixel(load_image(saved(tmp_path, Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "c.jpg", quality=100)))[0] > 240
    )
    sixteen = Image.fromarray(np.array([[65535, 32768], [0, 257]], dtype=np.uint16))
    image = load_image(saved(tmp_path, sixteen, "i16.png"))
    assert [pixel(image, xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [255, 128, 0, 1]
    assert pixel(to_rgb(Image.new("1", (2, 2), 1))) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.new("RGB", (8, 4), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = load_image(saved(tmp_path, wide, "o.jpg", exif=exif.tobytes()))
    assert image.size == (4, 8)


def test_pixel_limit_refuses_large_images_naming_the_file(tmp_path):
    path = saved(tmp_path, Image.new("RGB", (100, 50)), "big.png")
    with pytest.raises(ImageLoadError, match=rf"^{path}: image is 100x50 = 5,000 pixels, over the limit of 4,999 "):
        load_image(path, max_pixels=4999)
    assert load_image(path, max_pixels=5000).size == (100, 50)


def test_corrupt_truncated_and_missing_files_are_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(
        ImageLoadError,
        match=rf"^{corrupt}: not a readable image file \(corrupt or not an image; accepted "
        r"formats: PNG, JPEG, WebP, GIF or BMP\)$",
    ):
        load_image(corrupt)
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=rf"^{truncated}: corrupt or truncated image file"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match=rf"^{tmp_path}/nope.png: image file not found$"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="remote images are not fetched"):
        load_image("https://example.com/cat.png")


def test_data_url_and_bytes(tmp_path):
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert pixel(load_image(url)) == (1, 2, 3)
    assert pixel(load_image(buffer.getvalue())) == (1, 2, 3)


def test_pad_to_square_centres_the_image():
    square = pad_to_square(Image.new("RGB", (6, 2), (255, 0, 0)), (9, 9, 9))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (9, 9, 9) and square.getpixel((0, 2)) == (255, 0, 0)
    assert square.getpixel((0, 3)) == (255, 0, 0) and square.getpixel((0, 4)) == (9, 9, 9)


def test_pixel_statistics_per_channel_over_all_pixels(tmp_path):
    half = np.zeros((8, 8, 3), dtype=np.uint8)
    half[:, :4] = (255, 0, 51)  # left half red-ish, right half black
    Image.fromarray(half).save(tmp_path / "half.png")
    Image.new("RGB", (5, 5), (255, 255, 255)).save(tmp_path / "white.png")
    mean, std = pixel_statistics([tmp_path / "half.png", tmp_path / "white.png"], size=8)
    assert mean == pytest.approx([0.75, 0.5, 0.55], abs=1e-6)  # (1/2 + 1) / 2, (0 + 1) / 2, (0.1 + 1) / 2
    assert std[0] == pytest.approx(np.std([1.0] * 96 + [0.0] * 32), abs=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        pixel_statistics([], size=8)
    with pytest.raises(ImageLoadError, match="missing.png"):
        pixel_statistics([tmp_path / "missing.png"], size=8)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_the_five_formats_open(tmp_path, format):
    path = saved(tmp_path, Image.new("RGB", (6, 4), (0, 0, 255)), f"image.{format.lower()}", format=format)
    assert load_image(path).size == (6, 4)
    assert image_header(path) == (format, 6, 4)


@pytest.mark.parametrize("format", ["TIFF", "ICO", "PPM", "TGA"])
def test_other_formats_are_refused_naming_the_list(tmp_path, format):
    path = saved(tmp_path, Image.new("RGB", (16, 16), (0, 0, 255)), f"image.{format.lower()}", format=format)
    assert Image.open(path).format == format  # PIL would open it
    with pytest.raises(ImageLoadError, match=r"accepted formats: PNG, JPEG, WebP, GIF or BMP\)$"):
        load_image(path)


def test_an_eps_payload_never_reaches_a_decoder():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    with pytest.raises(ImageLoadError, match="accepted formats: PNG, JPEG, WebP, GIF or BMP"):
        load_image(eps)


def test_the_header_gives_the_size_without_decoding(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buffer, format="PNG")
    cut = buffer.getvalue()[:200]  # the header survives, the pixels do not
    assert image_header(cut) == ("PNG", 300, 200)
    with pytest.raises(ImageLoadError, match="over the limit of 59,999"):
        load_image(cut, max_pixels=59_999)  # refused from the header: the missing pixels are never read


def test_fit_within_shrinks_only_large_images_keeping_their_shape():
    assert fit_within(Image.new("RGB", (16000, 1000)), 384).size == (384, 24)
    assert fit_within(Image.new("RGB", (160000, 100)), 384).size == (384, 1)  # never an empty side
    small = Image.new("RGB", (100, 30))
    assert fit_within(small, 384) is small


@pytest.mark.parametrize("preprocess", ["pad", "resize"])
def test_the_processor_never_pads_more_than_the_tower_size(preprocess, monkeypatch):
    import wings.model.processing_wings as processing
    from tests.fixtures.tokenizers import build_processor

    processor = build_processor("chatml", image_preprocess=preprocess)
    padded = []
    original = processing.pad_to_square
    monkeypatch.setattr(
        processing,
        "pad_to_square",
        lambda image, fill: padded.append(original(image, fill).size) or original(image, fill),
    )
    pixels = processor.preprocess_images([Image.new("RGB", (20000, 50), (255, 0, 0))])
    side = processor.image_size
    assert pixels.shape == (1, 3, side, side)
    assert padded == ([(side, side)] if preprocess == "pad" else [])
