"""Calibration/evaluation npz: layouts understood, mistakes refused with the fix named."""

import numpy as np
import pytest

from qaas_engine import DataError, load_npz
from qaas_engine.data import InputSpec

IMAGE = [InputSpec("input", np.dtype(np.float32), (None, 1, 8, 8))]


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_batch_first_samples_and_labels(tmp_path):
    path = _npz(tmp_path, input=np.zeros((10, 1, 8, 8), np.float32), labels=np.arange(10))
    data = load_npz(path, IMAGE)
    assert data.num_samples == 10 and not data.stacked["input"]
    batches = list(data.batches(4))
    assert [b[0]["input"].shape[0] for b in batches] == [4, 4, 2]
    assert batches[-1][1].tolist() == [8, 9]


def test_stacked_samples_for_fixed_batch_and_scalars(tmp_path):
    inputs = [
        InputSpec("tokens", np.dtype(np.int64), (1, 5)),
        InputSpec("temperature", np.dtype(np.float32), ()),
    ]
    tokens = np.arange(15).reshape(3, 1, 5)  # three whole inputs of shape (1, 5)
    path = _npz(tmp_path, tokens=tokens, temperature=np.array([0.5, 1.0, 2.0], np.float32))
    data = load_npz(path, inputs)
    assert data.num_samples == 3 and data.stacked == {"tokens": True, "temperature": True}
    feeds, _ = next(iter(data.batches(8)))
    assert feeds["tokens"].shape == (1, 5) and feeds["tokens"].dtype == np.int64
    assert feeds["tokens"].tolist() == [[0, 1, 2, 3, 4]]  # real ids, never replaced
    assert feeds["temperature"].shape == ()


def test_wrong_keys_name_the_model_inputs(tmp_path):
    path = _npz(tmp_path, image=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="no array for input.*input.*unknown key.*image"):
        load_npz(path, IMAGE)


def test_wrong_shape_says_which_layouts_fit(tmp_path):
    path = _npz(tmp_path, input=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="does not fit the model input \\?x1x8x8"):
        load_npz(path, IMAGE)
    path = _npz(tmp_path, input=np.zeros((2, 8), np.float32))
    with pytest.raises(DataError, match="batch-first"):
        load_npz(path, IMAGE)


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    path = _npz(tmp_path, input=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_npz(path, IMAGE)


def test_float_data_for_integer_input_is_refused(tmp_path):
    inputs = [InputSpec("ids", np.dtype(np.int64), (None, 4))]
    path = _npz(tmp_path, ids=np.random.default_rng(0).random((3, 4)))
    with pytest.raises(DataError, match="takes int64 values"):
        load_npz(path, inputs)


def test_labels_must_match_samples(tmp_path):
    path = _npz(tmp_path, input=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(3))
    with pytest.raises(DataError, match="one class index per sample"):
        load_npz(path, IMAGE)


def test_not_an_npz(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"hello")
    with pytest.raises(DataError, match="not an .npz"):
        load_npz(path, IMAGE)


def test_nan_in_data_is_refused(tmp_path):
    array = np.zeros((2, 1, 8, 8), np.float32)
    array[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_npz(_npz(tmp_path, input=array), IMAGE)


def test_npz_member_that_is_not_an_array_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input.npy", b"not a numpy array")
    with pytest.raises(DataError, match="not a valid .npy"):
        load_npz(path, IMAGE)
