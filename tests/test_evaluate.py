from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from custom_nets.evaluation.baselines import predict_split
from custom_nets.evaluation.evaluate import evaluate_predictions
from custom_nets.evaluation.evaluate import main as evaluate_cli
from custom_nets.evaluation.evaluate import summarise


def _cohort(root, n=5, seed=0):
    """Subjects whose target is an exact function of T1w (2·scaled T1w + 0.5) inside a brain mask."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        name = f"sub-{i:02d}"
        mask = np.zeros((12, 12, 12), np.uint8)
        mask[2:10, 2:10, 2:10] = 1
        t1 = rng.uniform(100, 1000, mask.shape) * mask
        flair = rng.uniform(50, 500, mask.shape) * mask
        values = t1[mask > 0]
        low, high = np.percentile(values, [0.5, 99.5])
        target = (2 * np.clip((t1 - low) / (high - low), 0, 1) + 0.5) * mask
        entry = {"subject": name}
        for key, array in (("t1w", t1), ("flair", flair), ("mask", mask), ("pet", target)):
            path = root / name / f"{name}_{key}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
            entry[key] = f"{name}/{name}_{key}.nii.gz"
        entries.append(entry)
    datalist = {"training": entries[:3], "validation": entries[3:4], "test": entries[4:]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root / "datalist.json"


def test_baselines_recover_a_function_of_the_inputs(tmp_path):
    datalist = _cohort(tmp_path)
    # one input: 1,536 training voxels fill a 32-bin table (a 32×32 table over two inputs would be mostly empty)
    folders = predict_split(datalist, "pet", tmp_path / "baselines", input_keys=("t1w",))
    rmse = {name: evaluate_predictions(f, datalist, "pet")["summary"]["rmse"]["mean"] for name, f in folders.items()}
    assert rmse["cubic_polynomial"] < 1e-3  # the target is linear in the scaled T1w
    assert rmse["intensity_lookup"] < 0.1  # within a 1/32-wide bin of the scaled T1w (slope 2)
    assert rmse["population_mean"] > 5 * rmse["intensity_lookup"]


def test_perfect_prediction_and_written_files(tmp_path):
    datalist = _cohort(tmp_path)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for entry in json.loads(datalist.read_text(encoding="utf-8"))["test"]:
        (predictions / f"{entry['subject']}_pet.nii.gz").write_bytes((tmp_path / entry["pet"]).read_bytes())
    result = evaluate_predictions(predictions, datalist, "pet", out_dir=tmp_path / "scores", name="copy")
    assert result["summary"]["rmse"]["mean"] == 0 and result["summary"]["ssim"]["mean"] == pytest.approx(1.0)
    assert (tmp_path / "scores" / "metrics.csv").read_text(encoding="utf-8").startswith("subject,nrmse,rmse,psnr,ssim")
    assert "copy (pet, test, n=1)" in (tmp_path / "scores" / "summary.md").read_text(encoding="utf-8")


def test_missing_prediction_is_named(tmp_path, capsys):
    datalist = _cohort(tmp_path)
    (tmp_path / "empty").mkdir()
    assert evaluate_cli(["--pred", str(tmp_path / "empty"), "--datalist", str(datalist), "--target", "pet"]) == 2
    assert "expected the prediction sub-04_pet.nii.gz, found none" in capsys.readouterr().out


@pytest.mark.parametrize(
    "files, postfix, error",
    [
        (["md"], None, "expected the prediction sub-04_pet.nii.gz, found sub-04_md.nii.gz"),  # another task's map
        (["md", "pet"], None, None),  # every task's map in one eval/ folder: the target's is scored
        (["sr"], "sr", None),  # sr writes <id>_sr for the target fa
        (["pet"], "sr", "expected the prediction sub-04_sr.nii.gz, found sub-04_pet.nii.gz"),
    ],
)
def test_predictions_are_chosen_by_their_postfix(files, postfix, error, tmp_path, capsys):
    datalist = _cohort(tmp_path)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    target = tmp_path / "sub-04" / "sub-04_pet.nii.gz"
    for name in files:
        (predictions / f"sub-04_{name}.nii.gz").write_bytes(target.read_bytes())
    args = ["--pred", str(predictions), "--datalist", str(datalist), "--target", "pet"]
    code = evaluate_cli(args + (["--postfix", postfix] if postfix else []))
    output = capsys.readouterr().out
    if error:
        assert code == 2 and error in output
    else:
        assert code == 0 and json.loads((predictions / "scores" / "summary.json").read_text())["subjects"]["sub-04"][
            "rmse"
        ] == pytest.approx(0)


def test_a_mask_key_given_on_the_command_line_must_exist(tmp_path, capsys):
    """A mistyped --mask-key used to fall back to the derived mask without a word."""
    datalist = _cohort(tmp_path)
    args = ["--pred", str(tmp_path), "--datalist", str(datalist), "--target", "pet", "--mask-key", "nomask"]
    assert evaluate_cli(args) == 2
    assert "entry sub-04: no key 'nomask' (the mask to score in)" in capsys.readouterr().out


def test_summary_interval():
    summary = summarise([1.0, 2.0, 3.0, 4.0])
    assert summary["mean"] == 2.5 and summary["ci95_low"] < 2.5 < summary["ci95_high"]
    assert summary["ci95_high"] - summary["ci95_low"] == pytest.approx(
        2 * 3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, 1e-4
    )


@pytest.mark.parametrize("metric", ["rmse", "nrmse", "psnr", "ssim"])
def test_validation_metric_reads_in_the_target_units_as_evaluate_does(metric):
    """The bundle's ``val_*`` metrics (on the [0, 1]-scaled target, zero outside the brain as the preprocessing
    leaves it, scale = target_max − target_min) equal ``custom_nets.evaluation.evaluate``'s on the target file in its
    units, whose extracerebral signal is not zero: one definition of each metric."""
    import torch

    from custom_nets.metrics import METRICS, BrainMaskedMetric

    rng = np.random.default_rng(0)
    low, high = 0.0, 3.0  # pet.json's SUVR range
    target = torch.as_tensor(rng.uniform(0.5, 2.5, (1, 1, 12, 12, 12)))
    pred = target + torch.as_tensor(rng.normal(0, 0.2, target.shape))
    mask = torch.zeros_like(target)
    mask[..., 2:10, 2:10, 2:10] = 1
    in_units = METRICS[metric](pred, target, mask)
    scaled = BrainMaskedMetric(metric, scale=high - low)
    scaled(y_pred=(pred - low) / (high - low), y=torch.cat([(target - low) / (high - low) * mask, mask], dim=1))
    assert float(scaled.aggregate()) == pytest.approx(in_units, rel=1e-6)


@pytest.mark.parametrize("scale", [0, -1.0])
def test_validation_metric_scale_must_be_positive(scale):
    from custom_nets.metrics import BrainMaskedMetric

    with pytest.raises(ValueError, match="scale must be positive"):
        BrainMaskedMetric("rmse", scale=scale)


def _without_masks(datalist):
    content = json.loads(datalist.read_text(encoding="utf-8"))
    for entries in content.values():
        for entry in entries:
            entry.pop("mask")
    path = datalist.parent / "datalist_no_mask.json"
    path.write_text(json.dumps(content))
    return path


def test_datalists_without_masks_are_scored_in_the_mask_the_bundle_derives(tmp_path):
    """Skull-stripped inputs need no mask in the bundle; the baselines and the evaluation derive the same one (the
    cohort's inputs are zero outside its mask, so the derived mask is that mask and every score is unchanged)."""
    with_masks = _cohort(tmp_path)
    without = _without_masks(with_masks)
    folders = predict_split(without, "pet", tmp_path / "baselines", input_keys=("t1w",))
    for name, folder in folders.items():
        derived = evaluate_predictions(folder, without, "pet")["subjects"]
        given = evaluate_predictions(folder, with_masks, "pet")["subjects"]
        assert derived == given, name  # per subject: one test subject has no interval (NaN)


def test_no_mask_and_no_inputs_to_derive_one_is_named(tmp_path, capsys):
    without = _without_masks(_cohort(tmp_path))
    args = ["--pred", str(tmp_path), "--datalist", str(without), "--target", "pet", "--input-keys", "t2w"]
    assert evaluate_cli(args) == 2
    assert "entry sub-04: no 'mask' to score in, and not the inputs ['t2w']" in capsys.readouterr().out


def test_baselines_cli_reports_a_bad_datalist_without_a_traceback(tmp_path, capsys):
    from custom_nets.evaluation.baselines import main as baselines_cli

    datalist = _cohort(tmp_path)
    args = ["--datalist", str(datalist), "--target", "fa", "--out", str(tmp_path / "out")]
    assert baselines_cli(args) == 2
    assert "missing key 'fa'" in capsys.readouterr().out and not (tmp_path / "out").exists()
