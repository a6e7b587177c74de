"""Opening images safely: an explicit format list, any PIL mode to RGB, EXIF orientation, a pixel limit, clear errors.

Every image that reaches the vision tower goes through `load_image`, so a corrupt file, a
decompression bomb, an odd colour mode or a format outside `ALLOWED_FORMATS` fails here with the
file's name instead of deep inside a data loader worker. `image_header` reads only the size and
format (no pixel is decoded), for limits that must be checked before any decoding.
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The threshold PIL itself warns at (about 89 megapixels); a 64x64 .. 4K photo is far below it.
DEFAULT_MAX_PIXELS = 89_478_485
# The only formats opened (PIL's plugin names): PIL knows many more, some of which run external programs
# (EPS through Ghostscript) or parse rarely-used containers.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"

ImageSource = str | os.PathLike | bytes | Image.Image


class ImageLoadError(ValueError):
    """An image that cannot be used: missing, unreadable, truncated, or too large."""


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file (path, `data:` URL, raw bytes or PIL image) and return it as RGB.

    EXIF orientation is applied, so a phone photo taken upright is upright. Raises `ImageLoadError`
    naming the file for a missing, corrupt or truncated file, for a format outside `ALLOWED_FORMATS`,
    and for one over `max_pixels` pixels (checked from the header, before any pixel is decoded).
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    name, stream = _open_stream(source)
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; PIL's warning would only repeat it less clearly.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_allowed(name, stream)
            check_pixels(name, *image.size, max_pixels)
            image.load()  # decode now: a truncated file must fail here, not later in a worker
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: {error}; resize it or raise max_pixels") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports truncation and bad chunks this way
        raise ImageLoadError(f"{name}: corrupt or truncated image file ({error})") from error
    return to_rgb(ImageOps.exif_transpose(image))


def image_header(source: str | os.PathLike | bytes) -> tuple[str, int, int]:
    """(format, width, height) read from the header alone: no pixel is decoded. `ImageLoadError` as `load_image`."""
    name, stream = _open_stream(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_allowed(name, stream)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: {error}; resize it or raise max_pixels") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: corrupt or truncated image file ({error})") from error
    width, height = image.size
    return image.format, width, height


def check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    """`ImageLoadError` when a `width` x `height` image is over `max_pixels`, or has an empty side."""
    if width < 1 or height < 1:
        raise ImageLoadError(f"{name}: image is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a guard against decompression bombs); resize it or raise max_pixels"
        )


def _open_allowed(name: str, stream) -> Image.Image:
    """`Image.open` restricted to `ALLOWED_FORMATS`, with an error that lists them."""
    try:
        return Image.open(stream, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as error:
        raise ImageLoadError(
            f"{name}: not a readable image file (corrupt or not an image; accepted formats: {_FORMAT_NAMES})"
        ) from error


def fit_within(image: Image.Image, side: int) -> Image.Image:
    """`image` shrunk (aspect kept, bicubic) so that its longer side is at most `side`; smaller images unchanged.

    Done before padding to a square, so the padded square is at most `side` x `side` however long and thin
    the image is (a 16000x1000 image padded first would be a 256-megapixel square)."""
    width, height = image.size
    longest = max(width, height)
    if longest <= side:
        return image
    size = (max(1, round(width * side / longest)), max(1, round(height * side / longest)))
    return image.resize(size, Image.BICUBIC)


def _open_stream(source: str | os.PathLike | bytes) -> tuple[str, io.BytesIO | str]:
    """Return a display name and something `Image.open` accepts."""
    if isinstance(source, bytes):
        return "<image bytes>", io.BytesIO(source)
    text = os.fspath(source)
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header:
            raise ImageLoadError(f"{text[:40]}...: only base64 data URLs are supported")
        return "<data URL image>", io.BytesIO(base64.b64decode(payload))
    if text.startswith(("http://", "https://")):
        raise ImageLoadError(f"{text}: remote images are not fetched; download them and give a local path")
    if text.startswith("file://"):
        text = text[len("file://") :]
    if not Path(text).is_file():
        raise ImageLoadError(f"{text}: image file not found")
    return text, text


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels are composited onto white (what a viewer shows), 16/32-bit greyscale is
    scaled to 8 bits instead of being clipped to white, and CMYK / palette / YCbCr use PIL's maps.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_grey_to_rgb(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_grey_to_rgb(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float greyscale image into 0..255 and stack it into RGB."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 255.0 if values.max(initial=0) <= 255 else 65535.0
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side to make a square, image centred, padding in `fill` (the LLaVA/WINGS choice).

    With the normaliser's mean colour as `fill`, the padding becomes zeros after normalisation,
    so the vision tower sees the whole image undistorted and uncropped.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def pixel_statistics(images: list[ImageSource], size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of RGB values in [0, 1] over `images`, each resized to `size` x `size`.

    The normalisation a tower trained from scratch wants: with SigLIP's 0.5 / 0.5, easy-vqa's light backgrounds
    map to about 0.8 in every channel, and 95% of the projector's output energy was a constant shared by all
    images (42% with the data's statistics)."""
    if not images:
        raise ValueError("pixel statistics need at least one image")
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for source in images:
        pixels = np.asarray(load_image(source).resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
        pixels = pixels.reshape(-1, 3)
        total += pixels.sum(0)
        squares += (pixels**2).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()  # a blank data set must not divide by zero
