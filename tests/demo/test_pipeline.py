"""`wings demo` end to end on a tiny LLM and a tiny easy-vqa look-alike: report, plots, resume, identity."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from tests.fixtures.easy_vqa import fake_easy_vqa
from wings.demo.pipeline import DemoPipeline, stage_differences
from wings.demo.settings import DemoSettings, model_runs
from wings.model.processing_wings import WingsProcessor

# A run of seconds: tiny steps, a handful of questions, no checkpoints in between.
TINY_RUN = dict(
    lorra_rank=4,
    batch_size=2,
    align_steps=2,
    instruct_steps=1,
    save_steps=1000,
    vqa_limit=4,
    retention_limit=3,
    attention_samples=2,
    eval_batch_size=4,
    progress=False,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llm_dir):
    """One finished demo run (with the ablation) and its printed output."""
    raw = fake_easy_vqa(tmp_path_factory.mktemp("easy-vqa-raw"))
    settings = DemoSettings(
        out=tmp_path_factory.mktemp("demo"),
        llm=str(tiny_llm_dir),
        easy_vqa_source=raw,
        max_turns=2,
        max_length=64,
        threads=None,
        ablations=True,
        eval_cache=tmp_path_factory.mktemp("eval-cache"),
        **TINY_RUN,
    )
    report = DemoPipeline(settings).run()
    return settings, report


def test_writes_report_results_and_plots(finished):
    settings, report = finished
    out = Path(settings.out)
    for name in ("report.md", "results.json", "training_curves.png", "forgetting.png", "laws.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]) == ["base LLM", "WINGS", "LLaVA", "LLaVA (WINGS LR)", "visual learner only"]
    for row in results["summary"].values():
        assert set(row) >= {
            "easy-vqa acc",
            "yes/no",
            "open",
            "image swap",
            "image swap, open",
            "retention MC acc",
            "KL from base",
            "perplexity",
            "attention shift",
        }
        accuracy, low, high = row["easy-vqa acc"]  # with its 95% interval
        assert 0 <= low <= accuracy <= high <= 1
    base = results["summary"]["base LLM"]
    assert base["KL from base"] == pytest.approx(0.0, abs=1e-6)
    assert base["attention shift"] is None and base["image swap"] == 0.0  # it sees no image
    assert all(isinstance(results["summary"][name]["attention shift"], float) for name in ("WINGS", "LLaVA"))
    assert results["answer_prior"]["acc"] >= 0
    assert "wings chat --model" in results["chat"]
    assert set(results["retention_wings_better_than"]) == {"LLaVA", "LLaVA (WINGS LR)", "visual learner only"}
    for verdict in results["retention_wings_better_than"].values():
        assert set(verdict) == {"retention MC acc", "KL from base", "perplexity"}
        assert set(verdict.values()) <= {"better", "worse", "tie"}
    report_md = (out / "report.md").read_text()
    assert "| WINGS |" in report_md and "answer-prior" in report_md.lower()
    assert "| base LLM |" in report_md and "| n/a |" in report_md and "image swap" in report_md
    assert "seed standard deviations" not in report_md  # one seed: no spread to compare against
    # every model trained and scored with the demo's empty system turn, saved with its processor
    for folder in ("wings-align", "wings-instruct", "llava-instruct"):
        assert WingsProcessor.from_pretrained(out / folder).system_prompt == settings.system_prompt == ""
    # the default tower: pretrained, frozen, its features computed once per image
    provenance = json.loads((out / "wings-align" / "provenance.json").read_text())
    assert settings.vision == "efficientnet-lite0-in1k" and "(pretrained, frozen)" in report_md
    assert provenance["learning_rates"].keys() == {"projector", "visual_learners"}
    # Every step that ran says how many intra-op threads it used (measured: settings.threads is None).
    assert set(results["threads"]) == {step.name for step in DemoPipeline(settings).steps()}
    assert all(1 <= threads <= (os.cpu_count() or 1) for threads in results["threads"].values())
    # and how fast the machine ran before it, which dates the timings
    assert set(results["machine_gflops"]) == set(results["threads"])
    assert all(gflops > 0 for gflops in results["machine_gflops"].values())


def test_seeds_give_mean_and_spread_per_model(tmp_path, tiny_llm_dir):
    from wings.demo.report import seed_statistics

    settings = DemoSettings(
        out=tmp_path / "demo",
        llm=str(tiny_llm_dir),
        easy_vqa_source=fake_easy_vqa(tmp_path / "raw"),
        threads=1,
        eval_cache=None,
        seeds=2,
        **TINY_RUN,
        vision="siglip-scratch-32",
    )
    report = DemoPipeline(settings).run()
    names = list(report["summary"])
    assert names == [
        "base LLM",
        "WINGS",
        "LLaVA",
        "LLaVA (WINGS LR)",
        "WINGS [seed 1]",
        "LLaVA [seed 1]",
        "LLaVA (WINGS LR) [seed 1]",
    ]
    assert (tmp_path / "demo" / "wings-instruct-seed1" / "config.json").is_file()
    stats = seed_statistics(report["summary"])
    kl = [report["summary"][name]["KL from base"] for name in ("WINGS", "WINGS [seed 1]")]
    mean, sd, count = stats["WINGS"]["KL from base"]
    assert count == 2 and mean == pytest.approx(sum(kl) / 2) and sd == pytest.approx(abs(kl[0] - kl[1]) / 2**0.5)
    assert set(report["wings_differences_against_seed_spread"]) == {"LLaVA", "LLaVA (WINGS LR)"}
    report_md = (tmp_path / "demo" / "report.md").read_text()
    assert "| WINGS (2 seeds) |" in report_md and " ± " in report_md and "trained from scratch" in report_md


def test_after_align_text_outputs_equal_the_base_llm(finished):
    _, report = finished
    assert report["align_text_identity"]["identical"] is True
    assert report["align_text_identity"]["max_abs_logit_diff"] == 0.0


def test_stages_share_folders_and_the_matched_baseline_uses_wings_rates(finished):
    settings, _ = finished
    runs = {run.name: run for run in model_runs(settings)}
    assert runs["visual learner only"].align[1] == runs["WINGS"].align[1]  # the ablation starts from WINGS' align
    matched = runs["LLaVA (WINGS LR)"].instruct[2]
    assert matched == {g: settings.wings_rates["instruct"][g] for g in ("projector", "llm")}
    provenance = json.loads((Path(settings.out) / "visual-instruct" / "provenance.json").read_text())
    assert provenance["status"] == "complete"


def test_finished_stages_keep_their_model_and_drop_their_checkpoints(finished):
    settings, _ = finished
    for folder in ("wings-align", "wings-instruct", "llava-instruct"):
        assert (Path(settings.out) / folder / "config.json").is_file()
        assert not list((Path(settings.out) / folder).glob("checkpoint-*"))


def test_second_run_skips_every_finished_step(finished, capsys):
    settings, first = finished
    before = (Path(settings.out) / "eval" / "results.json").stat().st_mtime
    second = DemoPipeline(settings).run()
    printed = capsys.readouterr().out
    steps = DemoPipeline(settings).steps()
    assert second["skipped_steps"] == [step.name for step in steps]
    assert printed.count("skipped") == len(steps)
    assert (Path(settings.out) / "eval" / "results.json").stat().st_mtime == before
    assert second["summary"] == first["summary"]


def test_a_stage_trained_with_other_settings_is_trained_again_and_what_follows_redone(finished, capsys):
    settings, _ = finished
    changed = dataclasses.replace(settings, instruct_steps=settings.instruct_steps + 1)
    result = DemoPipeline(changed).run()
    printed = capsys.readouterr().out
    assert "train wings-instruct: trained with other settings (training.max_steps): training it again" in printed
    assert {"data", "train wings-align", "train llava-align"} <= set(result["skipped_steps"])
    assert not {"train wings-instruct", "train llava-instruct", "check align", "evaluate"} & set(
        result["skipped_steps"]
    )
    provenance = json.loads((Path(settings.out) / "wings-instruct" / "provenance.json").read_text())
    assert provenance["config"]["training"]["max_steps"] == changed.instruct_steps


def test_another_stage_one_mix_is_another_file_and_trains_stage_one_again(finished, capsys):
    settings, _ = finished
    changed = dataclasses.replace(settings, align_shares={"colour": 0.5, "shape": 0.25, "yes/no": 0.25})
    result = DemoPipeline(changed).run()
    printed = capsys.readouterr().out
    data = Path(settings.out) / "data" / "easy-vqa"
    assert (data / "align-50-25-25.json").is_file() and (data / "align-45-15-40.json").is_file()
    assert "train wings-align: trained with other settings (data.datasets): training it again" in printed
    assert not {"data", "train wings-align", "train llava-align", "train wings-instruct", "evaluate"} & set(
        result["skipped_steps"]
    )
    provenance = json.loads((Path(settings.out) / "wings-align" / "provenance.json").read_text())
    assert provenance["config"]["data"]["datasets"][0]["path"].endswith("align-50-25-25.json")
    assert result["settings"]["align_shares"] == {"colour": 0.5, "shape": 0.25, "yes/no": 0.25}


def test_a_stage_one_mix_without_colour_is_refused_before_any_step(tmp_path):
    settings = DemoSettings(out=tmp_path / "demo", align_shares={"colour": 0.0, "shape": 0.5, "yes/no": 0.5})
    with pytest.raises(ValueError, match=r"stage-1 shares must give colour \(> 0\)"):
        DemoPipeline(settings).run()
    assert not (tmp_path / "demo").exists()


def test_stage_differences_name_the_settings_that_changed():
    wanted = {
        "model": {"lorra_rank": 8, "system_prompt": ""},
        "data": {"max_length": 64},
        "optim": {"learning_rates": {"projector": 1e-3}, "loraplus_lr_ratio": 10.0},
        "training": {"max_steps": 300, "per_device_train_batch_size": 8, "seed": 0},
    }
    assert stage_differences(json.loads(json.dumps(wanted)), wanted) == []
    older = json.loads(json.dumps(wanted))
    del older["model"]["system_prompt"]  # trained before the setting existed
    older["optim"]["learning_rates"]["projector"] = 2e-3
    assert stage_differences(older, wanted) == ["model.system_prompt", "optim.learning_rates"]
    in_bf16 = json.loads(json.dumps(wanted))
    in_bf16["training"]["bf16"] = True  # a key neither has is no difference; one only the new config has is
    assert stage_differences(wanted, in_bf16) == ["training.bf16"]


@pytest.mark.parametrize("bf16", [True, False])
def test_stage_one_trains_in_bf16_with_eager_attention_when_asked_and_stage_two_in_float32(tmp_path, bf16):
    pipeline = DemoPipeline(DemoSettings(out=tmp_path, align_bf16=bf16))
    align = pipeline.stage_config("align", "wings-align", {"projector": 1e-3}, None)
    instruct = pipeline.stage_config("instruct", "wings-instruct", {"llm": 2e-6}, "wings-align")
    assert align["training"]["bf16"] is bf16
    assert align["model"].get("attn_implementation") == ("eager" if bf16 else None)
    assert "bf16" not in instruct["training"] and "attn_implementation" not in instruct["model"]


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_demo_rejects_a_bad_thread_count_before_doing_anything(threads, tmp_path, capsys):
    from wings.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["demo", "--threads", threads, "--out", str(tmp_path / "demo")])
    assert raised.value.code == 2
    assert "--threads" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_demo_rejects_an_unknown_tower_before_doing_anything(tmp_path, capsys):
    from wings.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["demo", "--quick", "--vision", "efficientnet-typo", "--out", str(tmp_path / "demo")])
    assert "--vision efficientnet-typo: not a preset (siglip-scratch-32" in str(raised.value.code)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("layer", [None, -5])
def test_the_tower_layer_is_chosen_by_stage_one_and_inherited_by_stage_two(tmp_path, layer):
    pipeline = DemoPipeline(DemoSettings(out=tmp_path, vision_feature_layer=layer))
    align = pipeline.stage_config("align", "wings-align", {"projector": 1e-3}, None)
    instruct = pipeline.stage_config("instruct", "wings-instruct", {"llm": 2e-6}, "wings-align")
    assert align["model"].get("vision_feature_layer") == layer  # None: the key is left out, the tower's own layer
    assert "vision_feature_layer" not in instruct["model"]  # a stage from a model keeps that model's layer


@pytest.mark.parametrize(
    ("vision", "layer", "message"),
    [
        ("efficientnet-lite0-in1k", 30, "vision_feature_layer 30 is outside the tower's 18 hidden states"),
        ("efficientnet-lite0-in1k", 0, "vision_feature_layer 0 is a stride-2 map; WINGS reads a map at"),
        ("siglip-scratch-32", -4, "vision_feature_layer -4 is outside the tower's 3 hidden states: use one of -3..2"),
    ],
)
def test_a_tower_layer_the_tower_lacks_is_refused_before_any_step(tmp_path, vision, layer, message):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=message):
        DemoPipeline(DemoSettings(out=out, vision=vision, vision_feature_layer=layer)).run()
    assert not out.exists()  # not even the data step ran


def test_the_demo_command_takes_a_tower_layer_into_its_own_folder_and_refuses_one_the_tower_lacks(
    tmp_path, monkeypatch, capsys
):
    from wings.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--vision-feature-layer", "30"]) == 1
    assert "error: vision_feature_layer 30 is outside the tower's 18 hidden states" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    chosen = {}
    monkeypatch.setattr(DemoPipeline, "run", lambda self: chosen.update(settings=self.settings))
    assert main(["demo", "--quick", "--vision-feature-layer", "-5"]) == 0
    assert chosen["settings"].vision_feature_layer == -5 and chosen["settings"].out == Path("runs/demo-quick-layer-5")
