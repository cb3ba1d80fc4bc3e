"""From new subjects to synthesis: one-command prediction on BIDS folders with sessions, flat folders and FreeSurfer
``.mgz`` files, errors that name the subject and key, and brain extraction of a real whole head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY, run_training
from monai.transforms import Compose

from custom_nets.datasets.folders import DatalistError, folder_items
from custom_nets.datasets.heads import write_real_head
from custom_nets.io import load_volume, sha256_of
from custom_nets.predict import main as predict_cli
from custom_nets.predict import predict, predict_folder
from custom_nets.transforms import preprocessing_transforms

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A bundle folder with the PET task trained for two iterations of the tiny network."""
    bundle = tmp_path_factory.mktemp("trained")
    shutil.copytree(CONFIGS, bundle / "configs")
    run_training(data_dir, bundle, "pet", configs=bundle / "configs")
    return bundle


def _subject_files(data_dir: Path, index: int) -> dict[str, Path]:
    folder = sorted(data_dir.glob("sub-*"))[index]
    return {key: folder / f"{folder.name}_{key}.nii.gz" for key in ("t1w", "flair", "mask")}


@pytest.fixture
def bids(data_dir, tmp_path) -> Path:
    """sub-01 with two sessions (NIfTI, no mask), sub-02 without sessions in FreeSurfer .mgz with a mask."""
    root = tmp_path / "bids"
    for session, index in (("ses-1", 0), ("ses-2", 1)):
        anat = root / "sub-01" / session / "anat"
        anat.mkdir(parents=True)
        files = _subject_files(data_dir, index)
        shutil.copy(files["t1w"], anat / f"sub-01_{session}_T1w.nii.gz")
        shutil.copy(files["flair"], anat / f"sub-01_{session}_FLAIR.nii.gz")
    anat = root / "sub-02" / "anat"
    anat.mkdir(parents=True)
    for key, suffix in (("t1w", "T1w"), ("flair", "FLAIR"), ("mask", "mask")):
        image = nib.load(str(_subject_files(data_dir, 2)[key]))
        data = np.asarray(image.dataobj, dtype=np.float32)
        nib.save(nib.MGHImage(data, image.affine), str(anat / f"sub-02_{suffix}.mgz"))
    return root


def test_bids_folder_with_sessions_and_mgz_gives_one_synthesis_per_session(trained, bids, tmp_path):
    out = tmp_path / "out"
    outputs = predict_folder(trained, "pet", bids, out, overrides=TINY, progress=False)
    names = sorted(p.name for p in outputs)
    assert names == ["sub-01_ses-1_pet.nii.gz", "sub-01_ses-2_pet.nii.gz", "sub-02_pet.nii.gz"]  # sessions kept apart
    inputs = {
        "sub-01_ses-1": bids / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "sub-01_ses-2": bids / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "sub-02": bids / "sub-02/anat/sub-02_T1w.mgz",
    }
    arrays = {}
    for entry, t1w in inputs.items():
        prediction, affine = load_volume(out / f"{entry}_pet.nii.gz")
        source, source_affine = load_volume(t1w)
        assert prediction.shape == source.shape and np.allclose(affine, source_affine, atol=1e-4)  # the input grid
        arrays[entry] = prediction
        sidecar = json.loads((out / f"{entry}_pet.json").read_text(encoding="utf-8"))
        assert sidecar["weights_sha256"] == sha256_of(trained / "models" / "model_pet.pt")
        assert sidecar["settings"]["task"] == "pet" and sidecar["bundle_version"]
        assert sidecar["settings"]["degrade_factor"] == 1  # sr's simulated loss of resolution, recorded
        assert sidecar["brain_mask"] == ("datalist" if entry == "sub-02" else "threshold")
    assert not np.array_equal(arrays["sub-01_ses-1"], arrays["sub-01_ses-2"])
    mask = load_volume(bids / "sub-02/anat/sub-02_mask.mgz")[0] > 0
    assert np.all(arrays["sub-02"][~mask] == 0)  # the datalist's (folder's) mask is used


def test_bids_dataset_read_by_pybids_takes_masks_from_derivatives(trained, bids, tmp_path):
    (bids / "dataset_description.json").write_text('{"Name": "new", "BIDSVersion": "1.8.0"}', encoding="utf-8")
    derivatives = bids / "derivatives" / "masks"
    (derivatives / "sub-01" / "anat").mkdir(parents=True)
    description = '{"Name": "masks", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}'
    (derivatives / "dataset_description.json").write_text(description, encoding="utf-8")
    mask = bids / "sub-02" / "anat" / "sub-02_mask.mgz"
    image = nib.load(str(mask))
    nib.save(
        nib.Nifti1Image(np.asarray(image.dataobj), image.affine),
        str(derivatives / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"),
    )
    mask.unlink()  # not a BIDS name in the raw dataset
    items = folder_items(bids, ["t1w", "flair"], "pybids")
    assert [item["id"] for item in items] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    assert all(item["mask"].endswith("sub-01_desc-brain_mask.nii.gz") for item in items[:2])  # one mask, both sessions
    assert "mask" not in items[2]
    outputs = predict_folder(trained, "pet", bids, tmp_path / "out", "pybids", overrides=TINY, progress=False)
    assert sorted(p.name for p in outputs) == [
        "sub-01_ses-1_pet.nii.gz",
        "sub-01_ses-2_pet.nii.gz",
        "sub-02_pet.nii.gz",
    ]


def test_flat_folder_and_the_one_subject_api(trained, data_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for index, name in ((0, "a01"), (1, "b02")):
        files = _subject_files(data_dir, index)
        shutil.copy(files["t1w"], flat / f"{name}_T1.nii.gz")
        shutil.copy(files["flair"], flat / f"{name}_FLAIR.nii.gz")
    keys = {"t1w": "{subject}_T1.nii.gz", "flair": "{subject}_FLAIR.nii.gz"}
    outputs = predict_folder(trained, "pet", flat, tmp_path / "out", "flat", keys, overrides=TINY, progress=False)
    assert sorted(p.name for p in outputs) == ["a01_pet.nii.gz", "b02_pet.nii.gz"]
    files = _subject_files(data_dir, 0)
    one = predict(trained, "pet", {"t1w": files["t1w"], "flair": files["flair"]}, tmp_path / "one", overrides=TINY)
    assert one.name == "sub-01_pet.nii.gz" and one.is_file()
    assert np.allclose(load_volume(one)[0], load_volume(outputs[0])[0], atol=1e-5)  # same subject, same synthesis


def test_a_bundle_without_its_trained_files_is_one_error_line(bids, tmp_path, capsys):
    """MONAI raises a config's FileNotFoundError as the cause of a RuntimeError: the CLI reports the cause, no
    traceback, exit code 2, nothing written."""
    bundle = tmp_path / "untrained"
    shutil.copytree(CONFIGS, bundle / "configs")
    out = tmp_path / "out"
    args = ["--bundle", str(bundle), "--task", "pet", "--input", str(bids), "--output", str(out)]
    assert predict_cli(args + ["--degrade-factor", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "not found" in error and "Traceback" not in error
    assert not out.exists() or not list(out.glob("*.nii.gz"))


def test_predict_may_set_a_task_id_on_purpose(bids, tmp_path, capsys):
    """``--task sr --degrade-factor 1`` (maps already at low resolution) differs from sr's overlay on purpose: the task
    check lets it through and the run stops only at what is really missing, the untrained bundle's weights."""
    bundle = tmp_path / "untrained"
    shutil.copytree(CONFIGS, bundle / "configs")
    root = tmp_path / "maps"
    root.mkdir()
    shutil.copy(bids / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", root / "s1_FA.nii.gz")
    args = ["--bundle", str(bundle), "--task", "sr", "--input", str(root), "--output", str(tmp_path / "out")]
    assert predict_cli(args + ["--layout", "flat", "--key", "fa={subject}_FA.nii.gz", "--degrade-factor", "1"]) == 2
    error = capsys.readouterr().err
    assert "not found" in error and "degrade_factor" not in error


def test_user_errors_are_found_in_the_cause_chain():
    from custom_nets.predict import user_error

    cause = FileNotFoundError("model_pet.pt not found")
    try:
        try:
            raise cause
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as wrapped:
        assert user_error(wrapped) is cause
    assert user_error(RuntimeError("a fault of ours")) is None


def test_missing_modality_is_named_and_nothing_is_written(trained, bids, tmp_path, capsys):
    (bids / "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(DatalistError, match=r"sub-01_ses-2: key 'flair': no file matches"):
        predict_folder(trained, "pet", bids, out, overrides=TINY, progress=False)
    assert predict_cli(["--bundle", str(trained), "--task", "pet", "--input", str(bids), "--output", str(out)]) == 2
    assert "sub-01_ses-2: key 'flair'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"needs input\(s\) \['flair'\]"):
        predict(trained, "pet", {"t1w": bids / "sub-02/anat/sub-02_T1w.mgz"}, out)


@pytest.fixture(scope="module")
def real_head(tmp_path_factory) -> dict[str, Path]:
    try:
        return write_real_head("robex_atlas", tmp_path_factory.mktemp("head"))
    except RuntimeError as error:  # the package index cannot be reached
        pytest.skip(f"real head not available: {error}")


def test_deepbet_extracts_the_brain_of_a_real_whole_head(real_head):
    reference = load_volume(real_head["mask"], axcodes="RAS")[0] > 0
    dice = {}
    for method in ("deepbet", "threshold"):
        chain = Compose(preprocessing_transforms(["t1w"], brain_extraction=method)[:3])  # load, RAS, brain mask
        mask = np.asarray(chain({"image": [str(real_head["t1w"])], "id": "head"})["mask"][0]) > 0
        dice[method] = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice["deepbet"] > 0.9, dice
    assert dice["threshold"] < dice["deepbet"] - 0.2, dice  # thresholding returns the head, not the brain


def test_whole_head_synthesis_lies_inside_the_extracted_brain(trained, real_head, tmp_path):
    # the real T1w head stands in for both inputs: what is checked is the grid and the brain, not the values
    inputs = {"t1w": real_head["t1w"], "flair": real_head["t1w"]}
    larger = {**TINY, "patch_size": [32, 32, 32], "sw_batch_size": 8}  # fewer windows over the 1.5 mm head
    output = predict(trained, "pet", inputs, tmp_path, brain_extraction="deepbet", overrides=larger)
    prediction, affine = load_volume(output)
    head, head_affine = load_volume(real_head["t1w"])
    assert prediction.shape == head.shape and np.allclose(affine, head_affine, atol=1e-4)  # the input grid
    chain = Compose(preprocessing_transforms(["t1w"], brain_extraction="deepbet")[:3])
    extracted = np.asarray(chain({"image": [str(real_head["t1w"])], "id": "head"})["mask"][0]) > 0  # RAS
    prediction = load_volume(output, axcodes="RAS")[0]
    assert not prediction[~extracted].any()
    assert (prediction[extracted] != 0).mean() > 0.8
    assert json.loads(output.with_name("sub-01_pet.json").read_text(encoding="utf-8"))["brain_mask"] == "deepbet"


def test_new_subject_path_preprocess_then_predict(trained, data_dir, tmp_path):
    """The README's two commands: scans in their own spaces → one grid → synthesis."""
    from custom_nets.datasets.preprocessing import resample, rigid_matrix
    from custom_nets.io import atomic_save_nifti
    from custom_nets.preprocess import main as preprocess_cli

    files = _subject_files(data_dir, 0)
    flair, affine = load_volume(files["flair"])
    centre = affine[:3, :3] @ (np.array(flair.shape) / 2) + affine[:3, 3]
    moved = resample((flair, affine), affine, flair.shape, np.linalg.inv(rigid_matrix((0, 0, 5), (3, -2, 0), centre)))
    raw_flair = atomic_save_nifti(tmp_path / "raw" / "flair.nii.gz", moved, affine)
    prepared = tmp_path / "prepared"
    argv = ["--subject", "sub-07", "--image", f"t1w={files['t1w']}", "--image", f"flair={raw_flair}"]
    assert preprocess_cli(argv + ["--out", str(prepared / "sub-07" / "anat")]) == 0
    outputs = predict_folder(trained, "pet", prepared, tmp_path / "out", overrides=TINY, progress=False)
    assert [p.name for p in outputs] == ["sub-07_pet.nii.gz"]
    assert load_volume(outputs[0])[0].shape == load_volume(files["t1w"])[0].shape
