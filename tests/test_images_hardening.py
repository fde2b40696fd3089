"""One guarded image decoder (faclip.images) for prepare, embed, search and serve: EXIF Pillow cannot
apply, malformed headers, 16/32-bit and float greys, containers that decode before the pixel guard,
and a query path that is a FIFO. Every hostile file is built here, in tmp_path."""

import io
import os
import random
import struct
import threading
import zlib

import numpy as np
import pytest
from conftest import draw_dish_image
from PIL import Image, ImageFile, ImageOps, features

from faclip.encode import decode_min_side, encode_images
from faclip.errors import FaclipError
from faclip.images import FORMATS, ImageRefused, load_rgb
from faclip.models import load_vision_model
from faclip.prepare import check_image


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A raw little-endian EXIF block (tag, type, count, value bytes), written by hand: Pillow refuses
    to write the malformed ones (an XResolution of type ASCII)."""
    ifd, extra = struct.pack("<H", len(entries)), b""
    data_offset = 8 + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        if len(value) > 4:
            ifd += struct.pack("<HHII", tag, kind, count, data_offset + len(extra))
            extra += value
        else:
            ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + extra


ORIENTATION_6 = (0x0112, 3, 1, struct.pack("<H", 6))  # rotate 90° clockwise to display
ASCII_XRESOLUTION = exif_block([(0x011A, 2, 8, b"72/1\0\0\0\0"), ORIENTATION_6])


def fuzzed_exif(seed: int) -> bytes:
    """A valid EXIF block (orientation, a rational, an Exif IFD pointer) with 4 random bytes changed."""
    block = bytearray(exif_block([ORIENTATION_6, (0x011A, 5, 1, struct.pack("<I", 34)),
                                  (0x8769, 4, 1, struct.pack("<I", 40))]))
    rng = random.Random(seed)
    for _ in range(4):
        block[rng.randrange(6, len(block))] = rng.randrange(256)
    return bytes(block)


def exif_transpose_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            ImageOps.exif_transpose(image)
    except Exception:
        return True
    return False


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The sizes of the images PIL decodes (an ImageFile.load with tiles left to decode), in order."""
    sizes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: (self.tile and sizes.append(self.size)) or real_load(self))
    return sizes


# --- EXIF that Pillow cannot apply ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_orientation_is_applied_even_when_other_exif_cannot_be_written_back(tmp_path, fmt):
    upright = draw_dish_image(3, 1, size=64).resize((64, 32))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera's raw pixels, 32x64
    data = encoded(stored, fmt, exif=ASCII_XRESOLUTION, **({"quality": 95} if fmt != "PNG" else {}))
    assert exif_transpose_fails(data)  # TypeError in Pillow: what crashed `embed` and made serve answer 500
    (tmp_path / "photo").write_bytes(data)
    for source in (data, tmp_path / "photo"):
        image = load_rgb(source)
        assert image.size == (64, 32)  # turned upright
        difference = np.abs(np.asarray(image, dtype=int) - np.asarray(upright, dtype=int)).mean()
        assert difference < (2 if fmt == "PNG" else 12)  # lossless, or lossy codec noise only
    assert check_image(str(tmp_path / "photo")).sha256 is not None  # prepare keeps it too


def test_fuzzed_exif_blocks_never_stop_a_decode():
    failing = 0
    for seed in range(200):
        for fmt in ("JPEG", "WEBP"):
            data = encoded(Image.new("RGB", (40, 20), (90, 160, 30)), fmt, exif=fuzzed_exif(seed))
            failing += exif_transpose_fails(data)
            image = load_rgb(data)  # never TypeError / struct.error / SyntaxError
            assert image.mode == "RGB" and image.size in ((40, 20), (20, 40))
    assert failing >= 2  # the blocks do break ImageOps.exif_transpose (SyntaxError, struct.error)


# --- malformed headers and damaged files: one line, kind `corrupt` ------------------------------

PNG = encoded(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG")
MALFORMED = {
    "ppm_size_4x": b"P6\n4x 4\n255\n" + b"\0" * 48,  # ValueError from Image.open
    "ppm_negative_size": b"P6\n-4 4\n255\n" + b"\0" * 48,
    "ppm_maxval_0": b"P5\n4 4\n0\n" + b"\0" * 16,
    "pgm_plain_word": b"P2\n2 2\n255\n0 12 abc 4\n",
    "png_truncated": PNG[: len(PNG) // 2],
    "png_header_only": PNG[:33],
    "gif_header_only": b"GIF89a\x10\x00\x10\x00",
    "bmp_bad_header": b"BM" + b"\xff" * 60,
    "tiff_garbage_ifd": b"II*\x00\x08\x00\x00\x00" + b"\xff" * 64,
    "webp_truncated": encoded(Image.new("RGB", (16, 16)), "WEBP")[:30],
    "jpeg_truncated": encoded(draw_dish_image(0, 0), "JPEG")[:200],
    "not_an_image": b"hello",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_image_is_one_line_and_a_corrupt_skip(tmp_path, case):
    path = tmp_path / f"{case}.img"
    path.write_bytes(MALFORMED[case])
    for source in (MALFORMED[case], path):
        with pytest.raises(ImageRefused) as err:
            load_rgb(source)
        assert err.value.kind == "corrupt" and "\n" not in str(err.value) and " at 0x" not in str(err.value)
    assert check_image(str(path)).reason == "image_corrupt"


def test_a_malformed_upload_is_a_422_and_odd_exif_a_200(tmp_path, tiny_model_dirs):
    from fastapi.testclient import TestClient
    from serve_fixtures import build_artifacts

    from faclip.search import Retriever
    from faclip.serve import create_app

    artifacts = build_artifacts(tmp_path, tiny_model_dirs)
    retriever = Retriever(artifacts.text_dir, artifacts.vision_dir, artifacts.index_dir, artifacts.docstore_path,
                          device="cpu")
    client = TestClient(create_app(retriever), raise_server_exceptions=False)
    bad = client.post("/search/image", files={"file": ("q.ppm", MALFORMED["ppm_size_4x"], "image/x-portable-pixmap")})
    assert bad.status_code == 422, bad.text
    assert "cannot read image" in bad.json()["detail"] and "\n" not in bad.json()["detail"]
    photo = encoded(draw_dish_image(1, 0).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=ASCII_XRESOLUTION)
    good = client.post("/search/image", files={"file": ("q.jpg", photo, "image/jpeg")})
    assert good.status_code == 200, good.text
    assert len(good.json()["hits"]) == 5


# --- 16/32-bit and float greys: the photo they hold ------------------------------------------


def gradient(low: float, high: float, dtype) -> np.ndarray:
    return np.tile(np.linspace(low, high, 64), (8, 1)).astype(dtype)  # (8, 64): dark left, bright right


def pgm16(values: np.ndarray) -> bytes:
    return b"P5\n%d %d\n65535\n" % (values.shape[1], values.shape[0]) + values.astype(">u2").tobytes()


GREYS = {
    "pgm_16bit": lambda: pgm16(gradient(0, 65535, np.uint16)),  # Pillow: mode I
    "pgm_12bit_maxval": lambda: b"P5\n64 8\n4095\n" + gradient(0, 4095, ">u2").tobytes(),  # scaled to 65535
    "png_16bit": lambda: encoded(Image.fromarray(gradient(0, 65535, np.uint16)), "PNG"),  # mode I;16
    "tiff_int32": lambda: encoded(Image.fromarray(gradient(0, 2_000_000_000, np.int32)), "TIFF"),
    "tiff_int32_signed": lambda: encoded(Image.fromarray(gradient(-70_000, 70_000, np.int32)), "TIFF"),
    "tiff_float_0_1": lambda: encoded(Image.fromarray(gradient(0, 1, np.float32)), "TIFF"),
    "tiff_float_wide": lambda: encoded(Image.fromarray(gradient(-3.5, 7000.25, np.float32)), "TIFF"),
    "i16b": lambda: Image.frombytes("I;16B", (64, 8), gradient(0, 65535, ">u2").tobytes()),
}


@pytest.mark.parametrize("case", sorted(GREYS))
def test_deep_greys_decode_to_the_gradient_they_hold(case):
    image = load_rgb(GREYS[case]())
    assert image.mode == "RGB" and image.size == (64, 8)
    row = np.asarray(image)[0, :, 0].astype(int)  # the red channel of the first row
    assert np.all(np.diff(row) >= 0), row  # brighter to the right, never darker
    assert row[0] <= 10 and row[-1] >= 245 and 100 <= row[32] <= 155, row  # not all white, not all black


def test_float_grey_with_nan_and_infinity_is_black_there_and_a_gradient_elsewhere():
    values = gradient(0, 1, np.float32)
    values[:, 0], values[:, 1], values[:, 2] = np.nan, np.inf, -np.inf
    row = np.asarray(load_rgb(encoded(Image.fromarray(values), "TIFF")))[0, :, 0].astype(int)
    assert list(row[:3]) == [0, 0, 0] and row[-1] == 255 and 100 <= row[32] <= 155


def test_transparent_pixels_go_onto_white_whatever_the_mode():
    grey = Image.fromarray(gradient(0, 255, np.uint8))
    palette = grey.convert("P")
    cases = {
        "L_with_transparency_key": encoded(grey, "PNG", transparency=0),
        "RGB_with_transparency_key": encoded(grey.convert("RGB"), "PNG", transparency=(0, 0, 0)),
        "P_with_transparency_key": encoded(palette, "PNG", transparency=palette.getpixel((0, 0))),
        "LA": encoded(Image.merge("LA", [grey, Image.new("L", grey.size, 0)]), "PNG"),
    }
    for name, data in cases.items():
        assert np.asarray(load_rgb(data))[0, 0].tolist() == [255, 255, 255], name  # was black: its hidden colour
    assert np.asarray(load_rgb(encoded(Image.new("1", (8, 8), 1), "PNG")))[0, 0].tolist() == [255, 255, 255]


# --- the pixel guard before any decode, for every container -----------------------------------


def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry claims 256x256 (0 means 256) and holds `png`."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def icns_holding(png: bytes) -> bytes:
    """An ICNS whose one `ic10` entry (1024x1024 by its type) holds `png`."""
    chunk = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(chunk)) + chunk


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return encoded(Image.new("1", (12000, 12000)), "PNG")  # ~140 KB, 144 Mpx once decoded


@pytest.mark.parametrize("container", [ico_holding, icns_holding])
def test_a_container_of_a_huge_png_is_refused_undecoded(tmp_path, decoded, huge_png, container):
    path = tmp_path / "icon.img"
    path.write_bytes(container(huge_png))
    with pytest.raises(ImageRefused) as err:
        load_rgb(path)
    assert err.value.kind == "corrupt" and "not a format faclip reads" in str(err.value)
    assert check_image(str(path)).reason == "image_corrupt"
    assert decoded == []  # the ICO was decoded in Image.open, before the 64 Mpx check: 5 s, +550 MB


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_format_faclip_reads_decodes_when_opened(decoded, fmt):
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    image = draw_dish_image(2, 1)
    data = encoded(image.convert("L") if fmt == "PPM" else image, fmt)
    with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
        assert opened.format in (fmt, "MPO") and decoded == []  # so the guard reads the size first
    assert load_rgb(data).size == image.size
    assert len(decoded) == 1


def test_a_huge_image_in_each_format_is_refused_from_its_header(decoded):
    for fmt in ("PNG", "TIFF", "GIF", "BMP", "PPM"):
        data = encoded(Image.new("1" if fmt != "GIF" else "L", (9000, 9000)), fmt)
        with pytest.raises(FaclipError, match="9000x9000 pixels"):
            load_rgb(data)
    assert decoded == []


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A deflate-compressed grey TIFF of width x height pixels in tiles of tile x tile, written by hand."""
    data = zlib.compress(bytes(min(tile * tile, 1 << 20)))
    entries = [(256, width), (257, height), (258, 8), (259, 8), (262, 1), (277, 1), (322, tile), (323, tile),
               (324, 8 + 2 + 12 * 10 + 4), (325, len(data))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def test_a_tiff_of_huge_tiles_is_refused_undecoded(tmp_path, decoded):
    assert load_rgb(tiled_tiff(8, 8, 16)).size == (8, 8)  # tiles of sane size decode
    decoded.clear()
    path = tmp_path / "tiles.tif"
    path.write_bytes(tiled_tiff(8, 8, 32768))  # an 8x8 image whose one tile would take 1 GB to decode
    with pytest.raises(ImageRefused, match="TIFF tiles are 32768x32768 pixels") as err:
        load_rgb(path)
    assert err.value.kind == "too_large" and decoded == []
    assert check_image(str(path)).reason == "image_too_large"


# --- a query path that is not a regular file --------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_search_image_on_a_fifo_is_one_line_not_a_hang(tmp_path, capsys):
    from faclip.__main__ import main

    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)
    exit_codes = []

    def search():
        try:
            main(["search", "--image", str(fifo), "--k", "1"])
        except SystemExit as exit:
            exit_codes.append(exit.code)

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # blocked opening the FIFO: a writer that closes at once lets it go on
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=20)
        pytest.fail("`faclip search --image` on a FIFO hung")
    assert exit_codes == [2]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"faclip error: cannot read image {fifo}: a FIFO (named pipe); give the path of a regular image file"]


def test_a_device_or_folder_path_is_refused_unopened(tmp_path):
    for path, what in (("/dev/zero", "a character device"), (tmp_path, "a folder")):
        with pytest.raises(ImageRefused, match=what) as err:
            load_rgb(path)
        assert err.value.kind == "not_a_file"


# --- prepare refuses exactly what embed's decoder fails on ------------------------------------


def test_prepare_skips_exactly_the_images_embed_cannot_decode(tmp_path, tiny_model_dirs):
    files = {f"malformed_{name}.img": data for name, data in MALFORMED.items()}
    files.update({f"grey_{name}.img": make() for name, make in GREYS.items() if name != "i16b"})
    files.update({f"fuzzed_exif_{seed}.{fmt}": encoded(draw_dish_image(seed % 4, 0), fmt, exif=fuzzed_exif(seed))
                  for seed in range(12) for fmt in ("JPEG", "WEBP")})
    files["ascii_xresolution.jpg"] = encoded(draw_dish_image(1, 1), "JPEG", exif=ASCII_XRESOLUTION)
    files["photo.jpg"] = encoded(draw_dish_image(2, 2, size=300), "JPEG", quality=90)
    files["icon.ico"] = encoded(draw_dish_image(3, 3), "ICO")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    model, processor = load_vision_model(tiny_model_dirs[1])
    min_side = decode_min_side(processor)
    accepted = []
    for name in sorted(files):
        path = str(tmp_path / name)
        check = check_image(path)
        try:
            load_rgb(path, min_side)  # what `embed` runs on each image
            embed_fails = False
        except FaclipError:
            embed_fails = True
        assert (check.reason == "image_corrupt") == embed_fails and check.reason in ("", "image_corrupt"), name
        if not embed_fails:
            accepted.append(path)
    assert len(accepted) == len(files) - len(MALFORMED) - 1  # only the malformed files and the ICO are skipped
    vectors = encode_images(model, processor, accepted, batch_size=8)
    assert vectors.shape == (len(accepted), 128) and np.isfinite(vectors).all()
