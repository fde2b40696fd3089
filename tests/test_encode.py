"""Encoders: unit-norm, deterministic, equal to a direct model call; odd image modes and EXIF rotation."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import draw_dish_image
from PIL import Image
from transformers import RobertaModel

from faclip.encode import encode_images, encode_texts, image_features, text_features, tokenize
from faclip.errors import FaclipError
from faclip.models import load_text_model, load_vision_model
from faclip.text import normalize_text

TEXTS = ["قورمه سبزی", "كباب كوبيده را با نان و گوجه کبابی می\u200cخورند، همراه با پیاز و ریحان تازه.", "آش"]


@pytest.fixture(scope="module")
def text_model(tiny_model_dirs):
    return load_text_model(tiny_model_dirs[0])


@pytest.fixture(scope="module")
def vision_model(tiny_model_dirs):
    return load_vision_model(tiny_model_dirs[1])


def _encode_one(vision_model, source) -> np.ndarray:
    return encode_images(*vision_model, [source])[0]


def _png(image: Image.Image, **save_args) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save_args)
    return buf.getvalue()


def test_texts_unit_norm_deterministic_and_equal_direct_call(text_model):
    model, tokenizer = text_model
    vectors = encode_texts(model, tokenizer, TEXTS, max_len=64, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, encode_texts(model, tokenizer, TEXTS, max_len=64, batch_size=2))
    # Batching, length-sorting and padding change nothing: each text alone, by a direct model call.
    for text, vector in zip(TEXTS, vectors):
        batch = tokenizer([normalize_text(text)], return_tensors="pt")
        with torch.no_grad():
            direct = model(**batch).pooler_output[0]
        np.testing.assert_allclose(vector, (direct / direct.norm()).numpy(), atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


def test_text_truncation_to_max_len(text_model):
    model, tokenizer = text_model
    long_text = " ".join([TEXTS[1]] * 20)
    assert tokenize(tokenizer, [long_text], max_len=16)["input_ids"].shape == (1, 16)
    # Whatever follows the first max_len tokens cannot change the vector.
    assert np.array_equal(encode_texts(model, tokenizer, [long_text], max_len=16),
                          encode_texts(model, tokenizer, [long_text + " آش رشته"], max_len=16))


def test_text_mean_pool_fallback_ignores_padding(text_model):
    _, tokenizer = text_model
    torch.manual_seed(0)
    model = RobertaModel(text_model[0].config, add_pooling_layer=False).eval()
    batched = encode_texts(model, tokenizer, TEXTS, max_len=64)  # padded to the longest
    alone = np.concatenate([encode_texts(model, tokenizer, [t], max_len=64) for t in TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    batch = tokenize(tokenizer, TEXTS[:1], max_len=64)
    with torch.no_grad():
        mean = model(**batch).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(batched[0], (mean / mean.norm()).numpy(), atol=1e-5)


def test_image_cls_fallback():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B, T, D)
    model = lambda pixel_values: SimpleNamespace(pooler_output=None, last_hidden_state=hidden)  # noqa: E731
    assert torch.equal(image_features(model, torch.zeros(2, 3, 8, 8)), hidden[:, 0])
    text_model = lambda **_: SimpleNamespace(pooler_output=None, last_hidden_state=hidden)  # noqa: E731
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(text_features(text_model, None, mask)[0], hidden[0, :2].mean(0))


def test_encoding_restores_training_mode(text_model, vision_model):
    for model in (text_model[0], vision_model[0]):
        model.train()
    encode_texts(*text_model, TEXTS, max_len=32)
    encode_images(*vision_model, [draw_dish_image(0, 0)])
    assert text_model[0].training and vision_model[0].training
    text_model[0].eval(), vision_model[0].eval()


def test_images_unit_norm_deterministic_and_equal_direct_call(vision_model, tmp_path):
    model, processor = vision_model
    images = [draw_dish_image(d, v) for d in range(3) for v in range(3)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    vectors = encode_images(model, processor, paths, batch_size=4)
    assert vectors.dtype == np.float32 and vectors.shape == (9, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        direct = model(**processor(images=images, return_tensors="pt")).pooler_output
    np.testing.assert_allclose(vectors, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-5)
    # Paths, bytes and PIL images, in workers or not, all give the same vectors.
    assert np.array_equal(vectors, encode_images(model, processor, images, batch_size=4))
    assert np.array_equal(vectors, encode_images(model, processor, [p.read_bytes() for p in paths],
                                                 batch_size=5, num_workers=2))
    assert not np.allclose(vectors[0], vectors[3], atol=1e-3)


def test_odd_image_modes_encode_like_their_rgb(vision_model):
    rgb = draw_dish_image(1, 0)
    reference = _encode_one(vision_model, rgb)
    other_dish = _encode_one(vision_model, draw_dish_image(2, 0))
    # Lossless conversions must give exactly the RGB picture's vector.
    assert np.array_equal(_encode_one(vision_model, rgb.convert("RGBA")), reference)  # opaque alpha
    assert np.array_equal(_encode_one(vision_model, rgb.convert("CMYK")), reference)
    grey = rgb.convert("L")
    assert np.array_equal(_encode_one(vision_model, grey), _encode_one(vision_model, grey.convert("RGB")))
    grey16 = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # 16-bit grey PNG, as scanners write
    assert np.array_equal(_encode_one(vision_model, _png(grey16)), _encode_one(vision_model, grey.convert("RGB")))
    # A palette image is quantised: close to its RGB source, closer than another dish.
    palette = _encode_one(vision_model, _png(rgb.convert("P")))
    assert palette @ reference > palette @ other_dish
    # Transparent pixels are composited onto white, not onto whatever colour they hide.
    clear = Image.new("RGBA", (64, 64), (200, 0, 0, 0))
    white = _encode_one(vision_model, Image.new("RGB", (64, 64), (255, 255, 255)))
    assert np.array_equal(_encode_one(vision_model, _png(clear)), white)
    assert not np.allclose(_encode_one(vision_model, clear.convert("RGB")), white, atol=1e-3)


def test_exif_rotated_image_encodes_like_the_upright_one(vision_model):
    upright = draw_dish_image(3, 1)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera's raw pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    tagged = _png(stored, exif=exif)
    assert np.array_equal(_encode_one(vision_model, tagged), _encode_one(vision_model, upright))
    assert not np.allclose(_encode_one(vision_model, stored), _encode_one(vision_model, upright), atol=1e-3)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_is_one_line_error(vision_model, tmp_path, num_workers):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(FaclipError, match="cannot read image .*bad.jpg") as err:
        encode_images(*vision_model, [draw_dish_image(0, 0), bad], num_workers=num_workers)
    assert "\n" not in str(err.value)


def test_bytes_that_are_no_image_name_the_problem_not_a_python_object():
    from faclip.encode import load_rgb

    with pytest.raises(FaclipError) as err:
        load_rgb(b"not an image")
    message = str(err.value)
    assert message.startswith("cannot read image the uploaded bytes: not a format") and " at 0x" not in message
