"""Training side: metrics, batched folds, LOSO outputs, resume, bad data."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mex.composite import DataError, load_flow_folder
from mex.models import build_model
from train.batched import Members, augment, resolve_precision
from train.cli import main as train_main
from train.loso import run_loso
from train.metrics import score_rows, uf1_uar
from train.predictions import read_predictions
from train.recipes import Recipe

COMPOSITE = Path(__file__).resolve().parents[1] / "data" / "megc2019-composite-flow"

TINY = ["--set", "model.dims=[16,8]", "--set", "model.heads=[2,1]", "--set", "batch_size=16"]


def test_composite_set_reads_as_documented():
    data = load_flow_folder(COMPOSITE)
    assert data.x.shape == (442, 3, 28, 28) and data.x.dtype == np.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert len(data.subjects) == 68
    assert np.bincount(data.y).tolist() == [250, 109, 83]
    assert {d: data.dataset.count(d) for d in set(data.dataset)} == {"casme2": 145, "samm": 133, "smic": 164}


def test_uf1_uar_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2 fp 0 fn 1 -> f1 0.8 rec 2/3; class 1: tp 1 fp 1 fn 1 -> 0.5, 0.5; class 2: tp 1 fp 1 fn 0 -> 2/3, 1
    m = uf1_uar(y, pred)
    assert m["uf1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["uar"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_command_line_families_are_the_model_families():
    from mex.models import FAMILIES
    from train.recipes import MODEL_FAMILIES

    assert tuple(FAMILIES) == MODEL_FAMILIES


@pytest.mark.parametrize("name", ["dacrossvit", "crossvit", "ststnet", "logreg"])
def test_stacked_members_match_separate_models(name):
    make = lambda: build_model(name)  # noqa: E731
    members = Members(make, 3, seed=1, device=torch.device("cpu"))
    x = torch.rand(3, 5, 3, 28, 28)
    stacked = members.forward(members.params, x, train=False)
    for i in range(3):
        torch.testing.assert_close(stacked[i], members.member(i, make=make)(x[i]), atol=1e-5, rtol=1e-5)


def test_pixel_head_starts_as_the_attention_model_and_adds_a_linear_map_of_the_pixels():
    plain = build_model("dacrossvit", dims=(16, 8), heads=(2, 1)).eval()
    hybrid = build_model("dacrossvit", dims=(16, 8), heads=(2, 1), pixel_head=True).eval()
    missing, unexpected = hybrid.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["pixel_head.weight", "pixel_head.bias"] and not unexpected
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), plain(x))  # zero-initialised: no contribution yet
        hybrid.pixel_head.weight.normal_()
        hybrid.pixel_head.bias.fill_(0.5)
        torch.testing.assert_close(hybrid(x) - plain(x), x.flatten(1) @ hybrid.pixel_head.weight.T + 0.5, atol=1e-4,
                                   rtol=1e-4)


def test_members_differ_and_train_independently():
    make = lambda: build_model("dacrossvit", dims=(16, 8), heads=(2, 1))  # noqa: E731
    members = Members(make, 2, seed=0, device=torch.device("cpu"))
    before = {k: v.detach().clone() for k, v in members.params.items()}
    assert not torch.equal(before["heads.0.weight"][0], before["heads.0.weight"][1])
    x = torch.rand(2, 4, 3, 28, 28)
    out = members.forward(members.params, x, train=True)
    out[0].sum().backward()  # a loss on member 0 only
    grads = members.params["heads.0.weight"].grad
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() == 0


def test_flip_mirrors_horizontal_flow():
    x = torch.rand(1, 3, 28, 28)
    gen = torch.Generator().manual_seed(0)
    outs = [augment(x, Recipe(flip=True), gen) for _ in range(16)]
    flipped = [o for o in outs if not torch.equal(o, x)]
    assert flipped, "a flip probability of 0.5 should flip at least once in 16 draws"
    f = flipped[0]
    torch.testing.assert_close(f[0, 0], 1 - x[0, 0].flip(-1))  # u mirrored and negated
    torch.testing.assert_close(f[0, 1:], x[0, 1:].flip(-1))  # v and strain only mirrored


def test_flip_tta_averages_the_image_and_its_mirror():
    from train.batched import mirror
    from train.loop import predict

    make = lambda: build_model("logreg")  # noqa: E731
    members = Members(make, 2, seed=0, device=torch.device("cpu"))  # two folds, one seed each
    x = torch.rand(5, 3, 28, 28)
    test_idx = torch.tensor([[0, 1, 2], [3, 4, -1]])
    torch.testing.assert_close(mirror(mirror(x)), x)
    plain = predict(members, members.params, x, test_idx, 1)
    tta = predict(members, members.params, x, test_idx, 1, tta_flip=True)
    fold1 = members.member(1, make=make)
    with torch.no_grad():
        expect = (fold1(x[3:5]).softmax(-1) + fold1(mirror(x[3:5])).softmax(-1)) / 2
    torch.testing.assert_close(tta[1, :2], expect)
    assert not torch.allclose(plain, tta)


def test_loso_writes_predictions_and_results_that_rescore(subset, tmp_path):
    out = tmp_path / "run"
    rc = train_main(["loso", "--data", str(subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "2",
                     "--eval-every", "1", "--device", "cpu", *TINY])
    assert rc == 0
    rows = read_predictions(out / "predictions.csv")
    data = load_flow_folder(subset)
    assert len(rows) == len(data)  # every clip predicted exactly once, by the fold that held it out
    assert {r["subject"] for r in rows} == set(data.subjects)
    header = next(csv.reader((out / "predictions.csv").open()))
    assert header[:5] == ["dataset", "subject", "clip", "label", "pred"]
    assert header[5:] == ["p_negative", "p_positive", "p_surprise"]
    res = json.loads((out / "results.json").read_text())
    assert set(res["pooled"]) == {"full", "casme2", "samm", "smic"}
    assert res["pooled"] == score_rows(rows)["pooled"]
    assert res["folds"] == 6 and res["epochs"] == 2 and res["device"] == "cpu" and res["precision"] == "fp32"
    for r in rows:
        p = [r["p_negative"], r["p_positive"], r["p_surprise"]]
        assert abs(sum(float(v) for v in p) - 1) < 1e-4 and int(np.argmax([float(v) for v in p])) == r["pred"]
    for f in ("report.md", "confusion.png", "curve.png", "curve.csv"):
        assert (out / f).stat().st_size > 0
    assert "DA-CrossViT, the paper" in (out / "report.md").read_text()


def test_bf16_forward_trains_and_differs_from_fp32_only_by_rounding(tiny_subset, tmp_path):
    """--precision bf16 (the default on CUDA) runs the same schedule under autocast; on the CPU it
    is only checked to train sanely and to stay close to fp32 (the weights and AdamW stay fp32)."""
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp16", torch.device("cpu"))
    probs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["loso", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "2",
                "--device", "cpu", "--precision", precision, *TINY]
        assert train_main(args) == 0
        assert json.loads((out / "results.json").read_text())["precision"] == precision
        rows = read_predictions(out / "predictions.csv")
        probs[precision] = np.array([[float(r[c]) for c in ("p_negative", "p_positive", "p_surprise")] for r in rows])
    assert np.isfinite(probs["bf16"]).all()
    assert 0 < np.abs(probs["bf16"] - probs["fp32"]).max() < 0.1


def test_rerun_with_other_arguments_is_refused(tiny_subset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["loso", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "1",
            "--device", "cpu", *TINY]
    assert train_main(args) == 0
    assert train_main([*args, "--seed", "5"]) == 2
    assert "other arguments" in capsys.readouterr().err
    assert train_main([*args[:-len(TINY)], "--epochs", "2", *TINY]) == 2
    assert "profile.recipe.epochs (1 -> 2)" in capsys.readouterr().err.replace("\n", "")
    (tmp_path / "file").write_text("x")
    assert train_main(["loso", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in " ".join(capsys.readouterr().err.split())  # rich wraps long paths


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "train.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **kw)


def test_killed_run_resumes_to_the_same_result(tiny_subset, tmp_path):
    epochs = 8
    common = ["loso", "--data", str(tiny_subset), "--profile", "cpu-quick", "--epochs", str(epochs), "--eval-every",
              "2", "--device", "cpu", "--save-every", "0", *TINY]
    straight = tmp_path / "straight"
    assert _run_cli([*common, "--out", str(straight)]).wait(timeout=300) == 0
    finished = torch.load(straight / "state.pt", weights_only=False)
    assert finished["epoch"] == epochs and "opt" not in finished  # a finished run keeps no optimizer moments
    first = (straight / "predictions.csv").read_text()
    (straight / "predictions.csv").unlink()
    assert _run_cli([*common, "--out", str(straight)]).wait(timeout=300) == 0
    assert (straight / "predictions.csv").read_text() == first  # re-predicted from the kept weights

    # The kill must land between two saved epochs; on a fast machine a run can reach its end between
    # two looks at state.pt, so a kill that came too late (or a run that ended first) is retried in a
    # fresh folder; a resume bug fails every attempt.
    for attempt in range(3):
        killed = tmp_path / f"killed{attempt}"
        proc = _run_cli([*common, "--out", str(killed)])
        state = killed / "state.pt"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and torch.load(state, weights_only=False)["epoch"] >= 2:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        epoch_at_kill = torch.load(state, weights_only=False)["epoch"]
        if epoch_at_kill < epochs:
            break
    assert 2 <= epoch_at_kill < epochs
    assert _run_cli([*common, "--out", str(killed)]).wait(timeout=300) == 0
    a = (straight / "predictions.csv").read_text()
    b = (killed / "predictions.csv").read_text()
    assert a == b  # same RNG streams, same weights: the restart recomputed nothing and lost nothing
    # each process that trained is on record (a re-prediction of a finished run is not a segment)
    straight_segments = json.loads((straight / "results.json").read_text())["segments"]
    killed_segments = json.loads((killed / "results.json").read_text())["segments"]
    assert [s["from_epoch"] for s in straight_segments] == [0]
    assert [s["from_epoch"] for s in killed_segments] == [0, epoch_at_kill]
    assert all(s["cpu_threads"] >= 1 and s["device"] == "cpu" for s in killed_segments)


def _write_labels(folder: Path, rows: list[list[str]]) -> None:
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "subject", "clip", "label", "emotion", "file"])
        w.writerows(rows)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d, rows: (d / rows[0][5]).unlink(), "image file is missing"),
        (lambda d, rows: (d / rows[0][5]).write_bytes(b"not a png"), "unreadable image"),
        (lambda d, rows: _write_labels(d, [rows[0][:3] + ["7"] + rows[0][4:]] + rows[1:]), "unknown label 7"),
        (lambda d, rows: _write_labels(d, rows + [rows[0]]), "duplicate clip"),
        (lambda d, rows: _write_labels(d, [[rows[0][0], ""] + rows[0][2:]] + rows[1:]), "empty 'subject'"),
        (lambda d, rows: (d / "labels.csv").write_text("dataset,subject\nx,y\n"), "missing column"),
        (lambda d, rows: _write_labels(d, [rows[0][:3] + ["2", "happiness"] + rows[0][5:]] + rows[1:]),
         "emotion 'happiness' is class positive but label 2 is surprise"),
        (lambda d, rows: _write_labels(d, rows + [rows[0][:2] + ["another", "1" if rows[0][3] != "1" else "0", "others",
                                                             rows[0][5]]]), "with another label"),
    ],
)
def test_bad_folders_name_the_problem(subset, mutate, message, capsys):
    with (subset / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    mutate(subset, rows)
    with pytest.raises(DataError, match=message):
        load_flow_folder(subset)
    rc = train_main(["loso", "--data", str(subset), "--out", str(subset.parent / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and message.split()[0] in err and str(subset) in err.replace("\n", "")


def test_labels_saved_by_a_spreadsheet_with_a_bom_read(subset):
    text = (subset / "labels.csv").read_text()
    (subset / "labels.csv").write_text("\ufeff" + text, encoding="utf-8")
    assert len(load_flow_folder(subset)) == len(text.strip().splitlines()) - 1


def test_unknown_override_is_refused(capsys):
    assert train_main(["loso", "--out", "/tmp/never", "--set", "model.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_study_runs_each_configuration_and_tables_mean_and_spread(tiny_subset, tmp_path, monkeypatch):
    out = tmp_path / "study"
    rc = train_main(["study", "fusion", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick",
                     "--epochs", "1", "--seeds", "2", "--device", "cpu"])
    assert rc == 0
    table = (out / "fusion.md").read_text()
    assert (out / "fusion.png").exists()  # the paired differences, linked from the table
    for name in ("da-paper", "da-aoa", "cross-attention"):
        assert f"| {name} | 2 |" in table
    assert "±" in table
    models = {json.loads((out / f"{n}_seed0" / "run.json").read_text())["profile"]["model"]
              for n in ("da-paper", "cross-attention")}
    assert models == {"dacrossvit", "crossvit"}

    # Two processes share a folder (--only): runs the other one finishes while this one trains are tabulated too.
    shared = tmp_path / "shared"
    for name in ("da-aoa_seed1", "cross-attention_seed0", "cross-attention_seed1"):
        shutil.copytree(out / name, shared / name)
    trained = []

    def run_loso_meanwhile_the_other_finishes(*args, **kwargs):
        run_loso(*args, **kwargs)
        trained.append(args[2].name)
        if len(trained) == 2:  # da-aoa_seed0 lands after this process went past it
            shutil.copytree(out / "da-aoa_seed0", shared / "da-aoa_seed0")

    monkeypatch.setattr("train.loso.run_loso", run_loso_meanwhile_the_other_finishes)
    rc = train_main(["study", "fusion", "--data", str(tiny_subset), "--out", str(shared), "--profile", "cpu-quick",
                     "--epochs", "1",
                     "--seeds", "2", "--device", "cpu", "--only", "da-paper"])
    assert rc == 0 and trained == ["da-paper_seed0", "da-paper_seed1"]
    assert "| da-aoa | 2 |" in (shared / "fusion.md").read_text()


def test_seed_ensemble_averages_probabilities_of_separate_runs(tmp_path):
    from train.report import ablation_table, ensemble_rows

    header = "dataset,subject,clip,label,pred,p_negative,p_positive,p_surprise\n"
    # two "seeds" that each get one clip wrong; their average gets both right
    runs = {"a_seed0": ["casme2,s1,c1,0,1,0.4,0.6,0.0", "casme2,s2,c2,1,1,0.1,0.9,0.0"],
            "a_seed1": ["casme2,s1,c1,0,0,0.9,0.1,0.0", "casme2,s2,c2,1,0,0.6,0.4,0.0"]}
    for name, rows in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text(header + "\n".join(rows) + "\n")
        (tmp_path / name / "run.json").write_text(json.dumps({"profile": {"model": "x"}, "seed": name[-1]}))
    paths = [tmp_path / n for n in runs]
    rows = ensemble_rows(paths)
    assert [r["pred"] for r in rows] == [0, 1]
    assert rows[0]["p_negative"] == pytest.approx(0.65)
    table = ablation_table(paths, "t")
    assert "| a | 2 | 0.333 / 0.500 ± 0.000 / 0.000 |" in table  # each seed alone: one of two right
    assert "| a, probability average of the 2 seeds | 2 | 1.000 / 1.000 |" in table
    # a second configuration is compared with the first seed by seed: seed 0 gains, seed 1 loses
    b_rows = {"b_seed1": runs["a_seed0"], "b_seed0": ["casme2,s1,c1,0,0,0.9,0.1,0.0", "casme2,s2,c2,1,1,0.1,0.9,0.0"]}
    for name, rows in b_rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text(header + "\n".join(rows) + "\n")
        (tmp_path / name / "run.json").write_text(json.dumps({"profile": {"model": "y"}, "seed": int(name[-1])}))
    table = ablation_table([*paths, *(tmp_path / n for n in b_rows)], "t", figure=tmp_path / "t.png")
    assert "Full UF1 − a's, same seed |" in table.splitlines()[2]
    assert "| a | 2 | 0.333 / 0.500 ± 0.000 / 0.000 | 0.333 / 0.500 ± 0.000 / 0.000 | – | – | reference |" in table
    assert "| b | 2 | 0.667 / 0.750 ± 0.471 / 0.354 |" in table and "| +0.333 ± 0.471 (+0.667 / +0.000) |" in table
    assert "![Full UF1 minus a's, same seed](t.png)" in table and (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "a_seed1" / "predictions.csv").write_text(header + runs["a_seed1"][0] + "\n")
    with pytest.raises(ValueError, match="a_seed1.*other clips"):
        ensemble_rows(paths)


def test_ensemble_size_line_scores_every_subset_of_seeds(tmp_path):
    from train.report import ablation_table

    header = "dataset,subject,clip,label,pred,p_negative,p_positive,p_surprise\n"
    # seeds 0 and 1 each get one clip right, seed 2 none; any pair with seed 2 keeps one clip right,
    # seeds 0+1 and all three get both right
    runs = {"a_seed0": ["casme2,s1,c1,0,1,0.4,0.6,0.0", "casme2,s2,c2,1,1,0.1,0.9,0.0"],
            "a_seed1": ["casme2,s1,c1,0,0,0.9,0.1,0.0", "casme2,s2,c2,1,0,0.6,0.4,0.0"],
            "a_seed2": ["casme2,s1,c1,0,1,0.45,0.55,0.0", "casme2,s2,c2,1,0,0.55,0.45,0.0"]}
    for name, rows in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text(header + "\n".join(rows) + "\n")
        # seed 2 pins a recipe field that seeds 0 and 1 predate, at its default: the same configuration
        recipe = {"recipe": {"tta_flip": False}} if name.endswith("2") else {}
        (tmp_path / name / "run.json").write_text(json.dumps({"profile": {"model": "x", **recipe},
                                                              "seed": int(name[-1])}))
    table = ablation_table([tmp_path / n for n in runs], "t", figure=tmp_path / "t.png")
    assert ("a, Full UF1 of the probability average of k seeds, mean [min–max] over every choice of k of its 3 seeds: "
            "1: 0.222 [0.000–0.333]; 2: 0.556 [0.333–1.000]; 3: 1.000 [1.000–1.000]. "
            "Clips right by 0, 1, … 3 of the seeds: 0, 2, 0, 0") in table
    assert "![Full UF1 against the number of seeds averaged](t-ensemble.png)" in table
    assert (tmp_path / "t-ensemble.png").read_bytes()[:4] == b"\x89PNG"
    # two seeds give no such line
    assert "every choice of k" not in ablation_table([tmp_path / "a_seed0", tmp_path / "a_seed1"], "t")


def test_fit_writes_a_checkpoint_that_loads(tiny_subset, tmp_path):
    from mex.checkpoint import load_checkpoint

    out = tmp_path / "fit"
    assert train_main(["fit", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "2",
                       "--device", "cpu", *TINY]) == 0
    model, info = load_checkpoint(out / "model.pt")
    assert info["model"] == "dacrossvit" and tuple(info["config"]["dims"]) == (16, 8)
    assert info["meta"]["data"]["clips"] == len(load_flow_folder(tiny_subset))
    probs = model(torch.from_numpy(load_flow_folder(tiny_subset).x[:4])).softmax(-1)
    assert probs.shape == (4, 3)


def test_a_state_that_cannot_be_written_stops_the_run_naming_it_and_keeps_the_last_one(tiny_subset, tmp_path,
                                                                                       monkeypatch, capsys):
    import train.state

    out = tmp_path / "run"
    args = ["loso", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "2",
            "--device", "cpu", "--save-every", "0", *TINY]
    real_save, calls = torch.save, []

    # what torch does when the disk fills mid-write: a partial file, then an error
    def disk_full_on_second_save(obj, path):
        calls.append(path)
        real_save(obj, path)
        if len(calls) == 2:
            with open(path, "r+b") as f:
                f.truncate(100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 464491136 vs 464491028")

    monkeypatch.setattr(train.state.torch, "save", disk_full_on_second_save)
    assert train_main(args) == 2
    err = capsys.readouterr().err
    words = " ".join(err.split())  # rich wraps long lines at word boundaries, and a long path anywhere
    assert f"{out}/state.pt".replace("/", "") in err.replace("\n", "").replace("/", "")
    assert "at epoch 2" in words and "state of epoch 1 is kept" in words and "free disk space" in words
    assert "[enforce fail at inline_container.cc:672]" in words  # torch's own words, not eaten as rich markup
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no temporary file left
    assert torch.load(out / "state.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train.state.torch, "save", real_save)
    assert train_main(args) == 0  # space freed: the same command continues from epoch 1
    assert (out / "predictions.csv").exists()


def test_a_run_file_of_the_older_formats_is_the_same_run(tmp_path):
    """run.json as pin_run wrote it before run files had a schema, and as older code wrote it (no precision,
    fewer Recipe fields, the data folder relative to the repository), reads as the current schema."""
    from train.loso import loso_run_args
    from train.recipes import resolve
    from train.runs import SCHEMA, pin_run, read_run, same_run

    args = loso_run_args(load_flow_folder(COMPOSITE), resolve("logreg", epochs=1), 0, "fp32")
    unversioned = json.loads(json.dumps(args))  # the file pin_run wrote: json.dumps(run_args, indent=2)
    older = json.loads(json.dumps(args))
    del older["precision"]
    for field in ("zoom", "blur", "span_min", "span_max", "live_clips", "tta_flip"):
        del older["profile"]["recipe"][field]
    older["data"] = "data/megc2019-composite-flow"
    for name, pinned in (("unversioned", unversioned), ("older", older)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(pinned, indent=2) + "\n")
        assert read_run(tmp_path / name / "run.json") == {"schema": SCHEMA, **unversioned}
        assert same_run(tmp_path / name, args)
        pin_run(tmp_path / name, args)  # the same run: no RunMismatch
    assert not same_run(tmp_path / "older", {**args, "seed": 1})
    (tmp_path / "new").mkdir()
    pin_run(tmp_path / "new", args)
    assert json.loads((tmp_path / "new" / "run.json").read_text()) == {"schema": SCHEMA, **unversioned}


def test_a_run_file_of_a_newer_schema_is_refused_naming_it(tiny_subset, tmp_path, capsys):
    from train.runs import SCHEMA, read_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"schema": SCHEMA + 1, "seed": 0}))
    with pytest.raises(ValueError, match=f"{out / 'run.json'}: .*schema {SCHEMA + 1} is newer than this code reads"):
        read_run(out / "run.json")
    args = ["loso", "--data", str(tiny_subset), "--out", str(out), "--profile", "cpu-quick", "--epochs", "1",
            "--device", "cpu"]
    assert train_main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"schema {SCHEMA + 1} is newer" in err and "run.json" in err and not (out / "state.pt").exists()


def test_inner_groups_partition_the_subjects_and_hold_their_clips_out():
    from train.select import deal_groups, group_clips

    deals = deal_groups(68, 8, 3, seed=0)
    assert len(deals) == 3 and deals != deal_groups(68, 8, 3, seed=1)
    for deal in deals:
        assert sorted(s for g in deal for s in g) == list(range(68)) and all(7 <= len(g) <= 9 for g in deal)
    fold_of = np.repeat(np.arange(68), 6)
    held = group_clips(deals[0], fold_of)
    for g, row in zip(deals[0], held):
        assert set(fold_of[row]) == set(g) and not set(fold_of[~row]) & set(g)
    with pytest.raises(ValueError, match="--holdout"):
        deal_groups(6, 4, 1, seed=0)


def test_nested_selection_picks_per_fold_by_inner_score_and_reuses_matching_runs(subset, tmp_path):
    common = ["--data", str(subset), "--profile", "cpu-quick", "--epochs", "2", "--seeds", "1", "--device", "cpu",
              *TINY]
    pre = tmp_path / "pre"
    assert train_main(["loso", "--out", str(pre), *common]) == 0
    out = tmp_path / "select"
    args = ["select", "--out", str(out), *common, "--try", "label_smoothing=0,mixup=0", "--holdout", "2", "--repeats",
            "2",
            "--reuse", str(pre)]
    assert train_main(args) == 0
    names = ["profile", "label_smoothing=0,mixup=0"]
    res = json.loads((out / "results.json").read_text())
    assert res["candidates"]["profile"]["outer_run"] == str(pre) and not (out / "outer-profile").exists()
    outer = {n: read_predictions(Path(res["candidates"][n]["outer_run"]) / "predictions.csv") for n in names}
    data = load_flow_folder(subset)
    for n in names:  # each inner deal predicts every clip once, from the model of the group holding it
        inner = read_predictions(out / f"inner-{n}" / "predictions.csv")
        assert sorted((r["deal"], r["clip"]) for r in inner) == sorted((d, c) for d in ("0", "1") for c in data.clip)
    with (out / "choices.csv").open(newline="") as f:
        choices = list(csv.DictReader(f))
    assert [c["subject"] for c in choices] == data.subjects
    rows = read_predictions(out / "predictions.csv")
    for c in choices:
        scores = [float(c[f"inner_uf1[{n}]"]) for n in names]
        assert c["chosen"] == names[int(np.argmax(scores))]  # argmax takes the first of a tie, as the selection does
        mine = [r for r in rows if r["subject"] == c["subject"]]
        assert mine == [r for r in outer[c["chosen"]] if r["subject"] == c["subject"]]
    assert res["pooled"] == score_rows(rows)["pooled"]
    assert sum(c["chosen_folds"] for c in res["candidates"].values()) == 6
    assert (out / "choices.png").stat().st_size > 0
    overall = [res["candidates"][n]["inner_pooled_full"]["uf1"] for n in names]
    assert res["choice_for_fit"] == names[int(np.argmax(overall))]
    first = (out / "predictions.csv").read_text()
    # a rerun reads the finished runs back
    assert train_main(args) == 0 and (out / "predictions.csv").read_text() == first

    # a schema-0 run.json (no precision, fewer Recipe fields, the data folder relative to the repository,
    # train/runs.py): reused as the same run
    old = tmp_path / "old"
    old.mkdir()
    (old / "predictions.csv").write_text((pre / "predictions.csv").read_text())
    pinned = json.loads((pre / "run.json").read_text())
    del pinned["schema"], pinned["precision"], pinned["profile"]["recipe"]["tta_flip"]
    pinned["data"] = os.path.relpath(pinned["data"], COMPOSITE.parents[1])
    (old / "run.json").write_text(json.dumps(pinned))
    again = tmp_path / "select-old"
    assert train_main([*args[:2], str(again), *args[3:-1], str(old)]) == 0
    assert json.loads((again / "results.json").read_text())["candidates"]["profile"]["outer_run"] == str(old)
    assert not (again / "outer-profile").exists()
    (old / "run.json").write_text(json.dumps({**pinned, "seed": 1}))  # another seed is another run
    assert train_main([*args[:2], str(tmp_path / "select-seed"), *args[3:-1], str(old)]) == 0
    assert (tmp_path / "select-seed" / "outer-profile" / "predictions.csv").exists()


@pytest.mark.parametrize("balanced", [False, True])
def test_floor_regression_reaches_the_penalised_optimum(balanced):
    """mex-bench floor's solver: at its answer the gradient of weighted cross-entropy + |W|^2 / (2C),
    written out here on the uncentred pixels, vanishes (the solver centres them internally)."""
    from benchmarks.floor import fit_logreg

    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, (60, 40))  # uncentred, like the feature pixels
    y = rng.choice(3, 60, p=[0.6, 0.3, 0.1])
    x[np.arange(60), y] += 0.2  # some signal
    C = 0.5
    w = fit_logreg(x, y, C, balanced, 3)
    counts = np.bincount(y, minlength=3)
    sw = (60 / (3 * counts))[y] if balanced else np.ones(60)
    logits = x @ w[:-1] + w[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = sw[:, None] * (p - np.eye(3)[y])
    # L-BFGS stops on a relative change of the objective: near, not at, a zero gradient (a wrong gradient
    # or intercept conversion leaves entries of order 1)
    assert np.abs(x.T @ r + w[:-1] / C).max() < 1e-3
    assert np.abs(r.sum(0)).max() < 1e-3
    assert np.abs(w[:-1]).max() > 0.1  # not the trivial answer


def test_floor_nested_choice_never_sees_the_held_out_subject(subset):
    """A fold's inner scores (so its choice) and its test predictions stay the same whatever its held-out
    subject's labels say; its inner scores also whatever that subject's images are."""
    from benchmarks.floor import run_floor

    data = load_flow_folder(subset)
    x = data.x.reshape(len(data), -1).astype(np.float64)
    subject = np.array(data.subject)
    candidates = [(0.03, False), (0.01, False), (0.01, True)]  # strong penalties: quick to fit
    first = run_floor(x, data.y, subject, candidates, 2, 3)
    assert np.array_equal(first["choice"], first["inner"].argmax(1))
    test = subject == first["subjects"][0]
    y = data.y.copy()
    y[test] = (y[test] + 1) % 3
    relabelled = run_floor(x, y, subject, candidates, 2, 3)
    assert np.array_equal(first["inner"][0], relabelled["inner"][0])
    assert np.array_equal(first["probs"][:, test], relabelled["probs"][:, test])
    assert not np.array_equal(first["inner"][1:], relabelled["inner"][1:])  # the other folds train on it
    x_blank = x.copy()
    x_blank[test] = 0.5
    assert np.array_equal(first["inner"][0], run_floor(x_blank, data.y, subject, candidates, 2, 3)["inner"][0])


def test_bench_floor_writes_a_run_that_rescores(subset, tmp_path):
    from benchmarks.cli import main as bench

    assert bench(["floor", "--data", str(subset), "--C", "0.03,0.01", "--inner-folds", "2", "--out",
                  str(tmp_path)]) == 0
    run = tmp_path / "floor"
    saved = json.loads((run / "results.json").read_text())
    assert saved["pooled"] == score_rows(read_predictions(run / "predictions.csv"))["pooled"]
    assert len(saved["candidates"]) == 4 and sum(c["folds_choosing"] for c in saved["candidates"]) == 6
    for fold in saved["choices"]:
        best = int(np.argmax(fold["inner_uf1"]))
        assert fold["choice"] == saved["candidates"][best]["label"]
    assert "nested" in (run / "floor.md").read_text() and (run / "floor.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [(["--C", "0"], "--C values must be > 0"), (["--C", "a"], "--C must be"),
                                           (["--inner-folds", "1"], "--inner-folds must be >= 2")])
def test_bench_floor_bad_flags_name_the_flag(args, message, tmp_path):
    from benchmarks.cli import main as bench

    with pytest.raises(SystemExit, match=message):
        bench(["floor", "--out", str(tmp_path), *args])


@pytest.fixture(scope="module")
def selected(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny `mex-train select` (its inner models and LOSO runs) and a `mex-bench floor` on a six-subject
    subset, made once for the stack tests: (subset, select folder, floor folder). Tests write elsewhere."""
    from benchmarks.cli import main as bench
    from conftest import make_subset

    root = tmp_path_factory.mktemp("stack")
    subset = make_subset(root / "subset")
    common = ["--data", str(subset), "--profile", "cpu-quick", "--epochs", "2", "--seeds", "1", "--device", "cpu",
              *TINY]
    select = root / "select"
    assert train_main(["select", "--out", str(select), *common, "--try", "mixup=0", "--holdout", "2", "--repeats",
                       "2"]) == 0
    assert bench(["floor", "--data", str(subset), "--C", "0.03,0.01", "--inner-folds", "2", "--out", str(root)]) == 0
    return subset, select, root / "floor"


def test_stack_alpha_choice_never_sees_the_held_out_subject(selected):
    """A fold's inner scores for the mix (so its alpha) stay the same whatever its held-out subject's
    labels, images and inner predictions are, while the folds that validate on that subject move."""
    from benchmarks.stack import nested_alphas, read_inner

    subset, select, _ = selected
    data = load_flow_folder(subset)
    keys = list(zip(data.dataset, data.subject, data.clip))
    groups, group_of_row, clip_of_row, deep_inner = read_inner(select / "inner-profile", keys)
    x = data.x.reshape(len(data), -1).astype(np.float64)
    subject = np.array(data.subject)
    candidates, alphas = [(0.03, False), (0.01, True)], [1.0, 0.5, 0.0]

    def scores(x, y, deep):
        return nested_alphas(x, y, subject, groups, group_of_row, clip_of_row, deep, candidates, 2, alphas, 3)["scores"]

    first = scores(x, data.y, deep_inner)
    f = data.subjects[0]
    test = subject == f
    y = data.y.copy()
    y[test] = (y[test] + 1) % 3
    relabelled = scores(x, y, deep_inner)
    assert np.array_equal(first[0], relabelled[0])
    assert not np.array_equal(first[1:], relabelled[1:])  # f's group-mates validate on f
    x_blank, deep_shuffled = x.copy(), deep_inner.copy()
    x_blank[test] = 0.5
    deep_shuffled[test[clip_of_row]] = deep_shuffled[test[clip_of_row]][:, ::-1]
    assert np.array_equal(first[0], scores(x_blank, data.y, deep_shuffled)[0])


def test_bench_stack_writes_a_run_that_rescores(selected, tmp_path):
    """Each clip is its fold's chosen mix of the LOSO run's and the floor's probabilities; the run
    re-scores and pools with `mex-train table` like any LOSO run."""
    from benchmarks.cli import main as bench
    from mex.labels import CLASSES

    subset, select, floor = selected
    loso = select / "outer-profile"
    args = ["stack", "--data", str(subset), "--loso", str(loso), "--inner", str(select / "inner-profile"),
            "--floor", str(floor), "--alphas", "1,0.5,0", "--out", str(tmp_path)]
    assert bench(args) == 0
    run = tmp_path / "stack-outer-profile"
    saved = json.loads((run / "results.json").read_text())
    rows = read_predictions(run / "predictions.csv")
    assert saved["pooled"] == score_rows(rows)["pooled"]
    alpha = {}
    for fold in saved["choices"]:
        assert fold["alpha"] == [1.0, 0.5, 0.0][int(np.argmax(fold["inner_uf1"]))] and fold["inner_clips"] > 0
        alpha[fold["subject"]] = fold["alpha"]
    assert set(alpha) == set(load_flow_folder(subset).subjects)
    deep = {(r["subject"], r["clip"]): r for r in read_predictions(loso / "predictions.csv")}
    lin = {(r["subject"], r["clip"]): r for r in read_predictions(floor / "predictions.csv")}
    for r in rows:
        a, key = alpha[r["subject"]], (r["subject"], r["clip"])
        want = [a * float(deep[key][f"p_{c}"]) + (1 - a) * float(lin[key][f"p_{c}"]) for c in CLASSES]
        assert np.allclose([float(r[f"p_{c}"]) for c in CLASSES], want, atol=2e-6)
    assert [f["alpha"] for f in saved["fixed"]] == [1.0, 0.5, 0.0]
    assert saved["fixed"][0]["pooled"] == score_rows(read_predictions(loso / "predictions.csv"))["pooled"]
    assert "nested" in (run / "stack.md").read_text() and (run / "stack.png").stat().st_size > 0
    assert train_main(["table", str(run), str(run)]) == 0  # the layout mex-train table reads


@pytest.mark.parametrize("change, message", [
    ({"--inner": "select/outer-profile"}, "no inner_groups"),
    ({"--loso": "select/outer-mixup=0"}, "not the same profile and seed"),
    ({"--floor": "select"}, "select/results.json: not a `mex-bench floor` run"),
    ({"--floor": "nowhere"}, "nowhere/results.json: not found"),
    ({"--alphas": "1,2"}, "--alphas must be distinct numbers in"),
])
def test_bench_stack_bad_inputs_name_the_folder_or_flag(selected, tmp_path, change, message):
    from benchmarks.cli import main as bench

    subset, select, _ = selected
    root = select.parent
    flags = {"--loso": "select/outer-profile", "--inner": "select/inner-profile", "--floor": "floor", "--alphas": "1,0"}
    flags.update(change)
    args = ["stack", "--data", str(subset), "--out", str(tmp_path)]
    for flag, value in flags.items():
        args += [flag, value if flag == "--alphas" else str(root / value)]
    with pytest.raises(SystemExit, match=message):
        bench(args)


def test_bench_stack_names_an_unfinished_run(selected, tmp_path):
    from benchmarks.cli import main as bench

    subset, select, floor = selected
    unfinished = tmp_path / "unfinished"
    shutil.copytree(select / "outer-profile", unfinished)
    (unfinished / "predictions.csv").unlink()
    with pytest.raises(SystemExit, match="unfinished/predictions.csv: not found"):
        bench(["stack", "--data", str(subset), "--loso", str(unfinished), "--inner", str(select / "inner-profile"),
               "--floor", str(floor), "--out", str(tmp_path)])


def test_ctrl_c_finishes_the_epoch_saves_and_the_rerun_resumes_there(tiny_subset, tmp_path):
    epochs = 30
    args = ["loso", "--data", str(tiny_subset), "--profile", "cpu-quick", "--epochs", str(epochs), "--eval-every", "1",
            "--device", "cpu", "--save-every", "100000", "--out", str(tmp_path / "run"), *TINY]
    proc = _run_cli(args, text=True)
    for line in proc.stdout:  # a log (not a terminal) gets one line per evaluated epoch
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, out
    assert "finishing this epoch" in out
    saved = torch.load(tmp_path / "run" / "state.pt", weights_only=False)["epoch"]
    assert 2 <= saved < epochs  # saved at the interrupt, not at --save-every
    rerun = _run_cli(args, text=True)
    out = rerun.stdout.read()
    assert rerun.wait(timeout=300) == 0 and f"resuming from epoch {saved} of {epochs}" in out.replace("\n", " ")
