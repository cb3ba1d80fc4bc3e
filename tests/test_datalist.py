from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from custom_nets.datasets.folders import DatalistError, build_datalist, folder_items
from custom_nets.datasets.folders import main as datalist_cli

KEYS = {
    "t1w": "anat/*_T1w.nii.gz",
    "flair": "anat/*_FLAIR.nii.gz",
    "mask": "anat/*_mask.nii.gz",
    "pet": "pet/*_pet.nii.gz",
}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), str(path))


def _bids(root, subjects=("sub-01", "sub-02", "sub-03", "sub-04"), sessions=None, seed=0):
    rng = np.random.default_rng(seed)
    for subject in subjects:
        for session in (sessions or {}).get(subject, [None]):
            folder = root / subject / session if session else root / subject
            stem = f"{subject}_{session}" if session else subject
            for key, pattern in KEYS.items():
                datatype, suffix = pattern.split("/*_")
                data = (rng.random((8, 8, 8)) > 0.3) if key == "mask" else rng.random((8, 8, 8))
                _save(folder / datatype / f"{stem}_{suffix}", data)
    return root


def test_bids_layout_with_sessions(tmp_path):
    root = _bids(tmp_path / "data", sessions={"sub-02": ["ses-1", "ses-2"]})
    out = build_datalist(root, tmp_path / "lists" / "datalist.json", KEYS, seed=3)
    datalist = json.loads(out.read_text(encoding="utf-8"))
    entries = [e for part in ("training", "validation", "test") for e in datalist[part]]
    assert sorted(e["id"] for e in entries) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03", "sub-04"]
    # both sessions of sub-02 fall in the same list (the split is by subject)
    parts = {part for part in ("training", "validation", "test") for e in datalist[part] if e["subject"] == "sub-02"}
    assert len(parts) == 1
    loaded = load_decathlon_datalist(str(out), data_list_key="training")
    assert loaded and all(np.asarray(nib.load(e["t1w"]).dataobj).shape == (8, 8, 8) for e in loaded)


def test_one_mask_may_serve_every_session_of_its_subject(tmp_path):
    root = _bids(tmp_path / "data", sessions={"sub-02": ["ses-1", "ses-2"]})
    masks = sorted(root.glob("sub-02/ses-*/anat/sub-02_ses-*_mask.nii.gz"))
    masks[1].write_bytes(masks[0].read_bytes())
    out = build_datalist(root, tmp_path / "datalist.json", KEYS)
    assert out.is_file()


def test_flat_layout_with_itk_formats(tmp_path):
    itk = pytest.importorskip("itk")
    rng = np.random.default_rng(0)
    for subject in ("a1", "b2", "c3"):
        for name in (f"{subject}_t1.mha", f"{subject}_flair.nrrd"):
            image = itk.image_from_array(rng.random((8, 8, 8)).astype(np.float32))
            image.SetSpacing([2.0, 2.0, 2.0])
            itk.imwrite(image, str(tmp_path / name))
    keys = {"t1w": "{subject}_t1.mha", "flair": "{subject}_flair.nrrd"}
    out = build_datalist(tmp_path, tmp_path / "datalist.json", keys, layout="flat")
    datalist = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(e["subject"] for p in ("training", "validation", "test") for e in datalist[p]) == ["a1", "b2", "c3"]


def test_flat_layout_reads_a_freesurfer_subjects_dir(tmp_path):
    """``SUBJECTS_DIR/<subject>/mri/*.mgz``: patterns reach into each subject's folders, subjects named freely."""
    root = tmp_path / "subjects"
    rng = np.random.default_rng(0)
    for subject in ("bert", "ernie", "fsaverage_like"):
        for name in ("T1.mgz", "FLAIR.mgz", "brainmask.mgz"):
            path = root / subject / "mri" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.MGHImage(rng.random((8, 8, 8)).astype(np.float32), AFFINE), str(path))
    keys = {"t1w": "{subject}/mri/T1.mgz", "flair": "{subject}/mri/FLAIR.mgz", "mask": "{subject}/mri/brainmask.mgz"}
    out = build_datalist(root, tmp_path / "datalist.json", keys, layout="flat")
    entries = [
        e for split in json.loads(out.read_text(encoding="utf-8")).values() if isinstance(split, list) for e in split
    ]
    assert sorted(e["subject"] for e in entries) == ["bert", "ernie", "fsaverage_like"]
    assert all(e["t1w"].endswith(f"{e['subject']}/mri/T1.mgz") for e in entries)
    with pytest.raises(DatalistError, match=r"no file under .* matches \(patterns are relative to --root"):
        build_datalist(root, tmp_path / "other.json", {"t1w": "{subject}_T1w.nii.gz"}, layout="flat")


def _flat_standard_space(root):
    """Three subjects registered to one template (standard space) and the template's brain mask, a single file."""
    rng = np.random.default_rng(0)
    for subject in ("s1", "s2", "s3"):
        for suffix in ("T1w", "FLAIR", "pet"):
            _save(root / f"{subject}_{suffix}.nii.gz", rng.random((8, 8, 8)))
    _save(root / "templates" / "brain_mask.nii.gz", rng.random((8, 8, 8)) > 0.3)
    return {"t1w": "{subject}_T1w.nii.gz", "flair": "{subject}_FLAIR.nii.gz", "pet": "{subject}_pet.nii.gz"}


def test_flat_layout_accepts_one_template_mask_for_every_subject(tmp_path):
    keys = _flat_standard_space(tmp_path) | {"mask": "templates/brain_mask.nii.gz"}
    out = build_datalist(tmp_path, tmp_path / "datalist.json", keys, layout="flat")
    entries = [e for part in ("training", "validation", "test") for e in json.loads(out.read_text())[part]]
    assert sorted(e["subject"] for e in entries) == ["s1", "s2", "s3"]
    assert {e["mask"] for e in entries} == {"templates/brain_mask.nii.gz"}
    items = folder_items(tmp_path, ["t1w", "flair"], "flat", keys)  # inference on the folder, no datalist
    assert [item["id"] for item in items] == ["s1", "s2", "s3"]
    assert {item["mask"] for item in items} == {str(tmp_path / "templates" / "brain_mask.nii.gz")}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"mask": "templates/missing_mask.nii.gz"}, "missing_mask.nii.gz does not exist (one file for every subject)"),
        ({"t2w": "templates/brain_mask.nii.gz"}, "--key t2w=templates/brain_mask.nii.gz: a flat-layout pattern needs"),
    ],
)
def test_flat_layout_refuses_a_fixed_file_that_cannot_be_shared(extra, message, tmp_path):
    keys = _flat_standard_space(tmp_path) | extra
    with pytest.raises(DatalistError) as error:
        build_datalist(tmp_path, tmp_path / "datalist.json", keys, layout="flat")
    assert message in str(error.value)
    assert not (tmp_path / "datalist.json").exists()
    with pytest.raises(DatalistError, match="no --key pattern has a {subject} placeholder"):
        build_datalist(tmp_path, tmp_path / "datalist.json", {"mask": "templates/brain_mask.nii.gz"}, layout="flat")


def _break_missing(root):
    (root / "sub-02/pet/sub-02_pet.nii.gz").unlink()
    return "sub-02", "pet"


def _break_unreadable(root):
    (root / "sub-03/anat/sub-03_FLAIR.nii.gz").write_bytes(b"not an image")
    return "sub-03", "flair"


def _break_shape(root):
    _save(root / "sub-01/pet/sub-01_pet.nii.gz", np.ones((8, 8, 6)))
    return "sub-01", "pet"


def _break_affine(root):
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0
    _save(root / "sub-04/anat/sub-04_FLAIR.nii.gz", np.random.default_rng(9).random((8, 8, 8)), shifted)
    return "sub-04", "flair"


def _break_nan(root):
    data = np.random.default_rng(5).random((8, 8, 8))
    data[2, 2, 2] = np.nan
    _save(root / "sub-02/anat/sub-02_T1w.nii.gz", data)
    return "sub-02", "t1w"


def _break_empty_mask(root):
    _save(root / "sub-01/anat/sub-01_mask.nii.gz", np.zeros((8, 8, 8)))
    return "sub-01", "mask"


def _break_duplicate(root):
    source = root / "sub-01/anat/sub-01_T1w.nii.gz"
    (root / "sub-03/anat/sub-03_T1w.nii.gz").write_bytes(source.read_bytes())
    return "sub-03", "t1w"


def _break_mask_of_another_subject(root):
    source = root / "sub-01/anat/sub-01_mask.nii.gz"
    (root / "sub-02/anat/sub-02_mask.nii.gz").write_bytes(source.read_bytes())
    return "sub-02", "mask"


def test_one_template_mask_may_serve_every_subject(tmp_path):
    """Data in standard space (e.g. MNI152) often shares one brain mask: not a duplicated subject."""
    root = _bids(tmp_path / "data")
    source = root / "sub-01/anat/sub-01_mask.nii.gz"
    for mask in root.glob("sub-0[234]/anat/*_mask.nii.gz"):
        mask.write_bytes(source.read_bytes())
    assert build_datalist(root, tmp_path / "datalist.json", KEYS).is_file()


def test_every_problem_is_listed_even_for_an_entry_missing_a_key(tmp_path):
    root = _bids(tmp_path / "data")
    (root / "sub-03/anat/sub-03_FLAIR.nii.gz").unlink()
    _save(root / "sub-03/pet/sub-03_pet.nii.gz", np.zeros((8, 8, 6)))  # off grid as well
    with pytest.raises(DatalistError) as error:
        build_datalist(root, tmp_path / "datalist.json", KEYS)
    problems = error.value.problems
    assert any("sub-03" in line and "'flair'" in line and "no file matches" in line for line in problems)
    assert any("sub-03" in line and "'pet'" in line and "shape" in line for line in problems), problems


def _break_ambiguous(root):
    _save(root / "sub-04/anat/sub-04_run-2_T1w.nii.gz", np.random.default_rng(6).random((8, 8, 8)))
    return "sub-04", "t1w"


@pytest.mark.parametrize(
    "breaker, message",
    [
        (_break_missing, "no file matches"),
        (_break_unreadable, "cannot be read"),
        (_break_shape, "shape"),
        (_break_affine, "affine differs"),
        (_break_nan, "non-finite"),
        (_break_empty_mask, "mask is empty"),
        (_break_duplicate, "same content"),
        (_break_mask_of_another_subject, "same content"),
        (_break_ambiguous, "2 files match"),
    ],
)
def test_each_problem_is_named_and_nothing_is_written(breaker, message, tmp_path):
    root = _bids(tmp_path / "data")
    subject, key = breaker(root)
    out = tmp_path / "datalist.json"
    with pytest.raises(DatalistError) as error:
        build_datalist(root, out, KEYS)
    lines = [line for line in error.value.problems if message in line]
    assert len(lines) == 1, error.value.problems
    assert lines[0].startswith(subject) and f"'{key}'" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".datalist*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layout", "flat", "--key", "t1w=T1w.nii.gz"], "{subject} placeholder"),
        (["--key", "t1w=anat/*_T2w.nii.gz"], "no file matches"),
    ],
)
def test_cli_errors(argv, message, tmp_path, capsys):
    _bids(tmp_path)
    assert datalist_cli(["--root", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "datalist.json").exists()


def test_cli_rejects_a_key_without_pattern(tmp_path):
    with pytest.raises(SystemExit):
        datalist_cli(["--root", str(tmp_path), "--key", "t1w"])


def test_cli_reports_and_writes_nothing_for_a_bad_root(tmp_path, capsys):
    assert datalist_cli(["--root", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert datalist_cli(["--root", str(tmp_path / "empty")]) == 2
    assert "no sub-* folders" in capsys.readouterr().err


def test_cli_writes_default_path(tmp_path):
    root = _bids(tmp_path)
    args = ["--root", str(root)] + [f"--key={k}={v}" for k, v in KEYS.items()]
    assert datalist_cli(args) == 0
    assert (root / "datalist.json").is_file()


def test_missing_datalist_names_the_file_and_how_to_make_one(tmp_path):
    from custom_nets.data import load_items

    with pytest.raises(FileNotFoundError, match=r"datalist .*missing\.json not found: generate one with"):
        load_items(tmp_path / "missing.json", "training", ["t1w"])


def _entry(name, session=None, **files):
    entry = {"subject": name, **({"session": session} if session else {})}
    stem = f"{name}_{session}" if session else name
    return {**entry, "t1w": f"{stem}_t1w.nii.gz", "pet": f"{stem}_pet.nii.gz", "mask": "mni_mask.nii.gz", **files}


@pytest.mark.parametrize(
    "test_entry, validation_entry, error, warning",
    [
        (_entry("sub-01"), _entry("sub-03"), "'test' entry 'sub-01' shares the id 'sub-01' with 'training'", None),
        (
            {**_entry("sub-09"), "t1w": "sub-02_t1w.nii.gz"},
            _entry("sub-03"),
            r"'test' entry 'sub-09' shares the file .*sub-02_t1w.nii.gz \(training entry 'sub-02'\)",
            None,
        ),
        (_entry("sub-04"), _entry("sub-02"), None, "'validation' entry 'sub-02' shares the id"),
        (_entry("sub-01", "ses-2"), _entry("sub-03"), None, "is a session of subject 'sub-01'"),
        (_entry("sub-04"), _entry("sub-03"), None, None),  # one MNI brain mask for every entry is not a leak
    ],
)
def test_test_entries_must_be_held_out_from_training(test_entry, validation_entry, error, warning, tmp_path, caplog):
    from custom_nets.data import check_held_out

    training = [_entry("sub-01", "ses-1" if test_entry.get("session") else None), _entry("sub-02")]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": training, "validation": [validation_entry], "test": [test_entry]}))
    with caplog.at_level("WARNING", logger="custom_nets.data"):
        if error:
            with pytest.raises(ValueError, match=error):
                check_held_out(path, keys=["t1w", "pet"])
            return
        check_held_out(path, keys=["t1w", "pet"])
    assert (warning is None and not caplog.text) or (warning and warning in caplog.text)


def test_entries_without_ids_are_compared_by_their_files(tmp_path):
    from custom_nets.data import check_held_out

    path = tmp_path / "datalist.json"
    files = [{"t1w": f"{i}_t1w.nii.gz", "pet": f"{i}_pet.nii.gz"} for i in range(3)]
    path.write_text(json.dumps({"training": files[:2], "test": [files[2]]}))
    check_held_out(path)  # entry-0 in both lists is a position, not a scan
    path.write_text(json.dumps({"training": files[:2], "test": [files[1]]}))
    with pytest.raises(ValueError, match="shares the file"):
        check_held_out(path)


def test_training_items_refuse_a_test_entry_seen_in_training(data_dir, tmp_path):
    from custom_nets.data import load_items

    content = json.loads((data_dir / "datalist.json").read_text())
    content["test"] = content["test"] + content["training"][:1]
    path = tmp_path / "leaky_datalist.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="test entries must be held out"):
        load_items(path, "training", ["t1w", "flair"], "pet", base_dir=data_dir)
