"""`diagnose export`: each exporter on real exact-engine run directories (tests/fixtures_run.py), parsed back
and checked value by value; the default pick (recommended, or the highest with a warning); `--config`; one
line for a configuration a trainer cannot express, naming the closest one it can and its alignment; one
`error:` line for bad input; and, with TRL installed (the `trl` extra), GKDConfig built from the TRL output and
TRL's own GKD loss differentiated by autograd against the objective registry's d = -dL/dz."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess

import pytest
import torch
import yaml
from fixtures_run import FLATTER, SHARPER, exact_run
from typer.testing import CliRunner

from diagnose import export, objectives
from diagnose.cli import app
from diagnose.tables import read_summary

OBJECTIVES = ["rkl", "fkl", "jsd:beta=0.3", "rkl_topk:k=3,support=teacher", "fkl_topk:k=3", "rkl_sampled", "k3_loss"]
TEMPLATE = "{answer}.{question}"  # the exact engine's tokenizer knows digits, '.' and '=' only


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "teacher.txt"
    path.write_text(TEMPLATE)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, template):
    """Two external teachers and a self-distillation one (a template context) x seven objectives, 6 questions:
    no clear winner (checked where it matters)."""
    return exact_run(
        tmp_path_factory.mktemp("export") / "run", teachers=[FLATTER, SHARPER, f"self:template={template}"],
        objectives=OBJECTIVES, questions=6, rollouts=4, budget=120, seed=3,
    )


@pytest.fixture(scope="module")
def clear_run(tmp_path_factory):
    """The flattened and the sharpened student under rkl point in opposite directions: 16 questions separate them."""
    return exact_run(
        tmp_path_factory.mktemp("export") / "clear", teachers=[FLATTER, SHARPER], objectives=["rkl"],
        questions=16, rollouts=4, budget=60, seed=3,
    )


def cli(*args):
    res = CliRunner().invoke(app, ["export", *map(str, args)])
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    return res


def one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def standing(run_dir, label):
    row = read_summary(run_dir).table.query("metric == 'cos_full' and config == @label").iloc[0]
    return f"alignment {row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def overall(run_dir):
    return read_summary(run_dir).recommendation["cos_full"]["overall"]


def swift_flags(text: str) -> dict[str, str]:
    args = shlex.split(text[text.index("\nswift rlhf \\\n"):].replace("\\\n", " "))
    assert args[:2] == ["swift", "rlhf"] and args[-1] == "$@" and len(args) % 2 == 1
    return {args[i][2:]: args[i + 1] for i in range(2, len(args) - 1, 2)}


def exported(run_dir, to, label, tmp_path, name="out"):
    out = tmp_path / name
    res = cli(run_dir, "--to", to, "--config", label, "--out", out)
    assert res.exit_code == 0, res.output
    assert str(out) in res.stdout and not list(tmp_path.glob(".*.tmp"))
    return out.read_text(), res


# ---- the default pick ------------------------------------------------------------------------------------


def test_default_is_the_recommended_configuration(clear_run):
    top = overall(clear_run)
    assert top["clear"] is True
    res = cli(clear_run, "--to", "trl")
    assert res.exit_code == 0 and not res.stderr.strip(), res.output  # temperature 1, top_p 1: nothing to warn
    path = clear_run / "trl_gkd.yaml"
    assert f"wrote {path}" in res.stdout and "recommended" in res.stdout
    kw = yaml.safe_load(path.read_text())
    teacher = top["config"].split("|")[0].removeprefix("model=")
    assert kw == {"model_name_or_path": "exact", "teacher_model_name_or_path": teacher, "beta": 1.0, "lmbda": 1.0,
                  "seq_kd": False, "temperature": 1.0, "max_new_tokens": 8}
    assert "recommended (clearly ahead" in path.read_text()


def test_default_without_a_clear_winner_is_the_highest_with_a_warning(run):
    top = overall(run)
    assert top["clear"] is False
    res = cli(run, "--to", "json")
    assert res.exit_code == 0, res.output
    warning = res.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: no clear winner: " + top["config"])
    assert top["runner_up"] in warning[0]
    spec = json.loads((run / "training.json").read_text())
    assert spec["configuration"] == top["config"] and spec["chosen"] == "highest"
    assert spec["alignment"]["mean"] == pytest.approx(top["mean"]) and spec["alignment"]["rank"] == 1
    assert spec["alignment"]["clear_winner"] is False and spec["alignment"]["runner_up"] == top["runner_up"]
    assert spec["warnings"] == [warning[0].removeprefix("warning: ")]


# ---- each exporter, parsed back --------------------------------------------------------------------------


def test_trl_output(run, tmp_path):
    text, _ = exported(run, "trl", f"{FLATTER}|jsd:beta=0.3", tmp_path)
    assert yaml.safe_load(text) == {
        "model_name_or_path": "exact", "teacher_model_name_or_path": "exact:scale=1.0", "beta": 0.3, "lmbda": 1.0,
        "seq_kd": False, "temperature": 1.0, "max_new_tokens": 8,
    }
    assert standing(run, f"{FLATTER}|jsd:beta=0.3") in text.replace("Alignment (cos_full): ", "alignment ")


def test_trl_distillation_output(run, tmp_path):
    text, _ = exported(run, "trl-distill", f"{SHARPER}|rkl", tmp_path)
    assert yaml.safe_load(text) == {
        "model_name_or_path": "exact", "teacher_model_name_or_path": "exact:scale=4.0", "beta": 1.0,
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_completion_length": 8,
    }


def test_swift_outputs(run, tmp_path, template):
    text, _ = exported(run, "swift", f"{FLATTER}|rkl_topk:k=3,support=teacher", tmp_path, "gkd.sh")
    assert swift_flags(text) == {
        "rlhf_type": "gkd", "model": "exact", "beta": "1.0", "lmbda": "1.0", "gkd_logits_topk": "3",
        "teacher_model": "exact:scale=1.0", "temperature": "1.0", "top_p": "1.0", "max_completion_length": "8",
    }
    assert subprocess.run(["bash", "-n", str(tmp_path / "gkd.sh")]).returncode == 0
    # OPD-RL: GRPO with the teacher's log-ratio as the advantage, GRPO's reference KL (its --beta) off
    text, _ = exported(run, "swift", f"{SHARPER}|rkl_sampled", tmp_path, "opd.sh")
    assert swift_flags(text) == {
        "rlhf_type": "grpo", "model": "exact", "beta": "0.0", "teacher_kl_coef": "1.0",
        "teacher_model": "exact:scale=4.0", "temperature": "1.0", "top_p": "1.0", "max_completion_length": "8",
    }
    # self-distillation: a teacher_prompt column built from the context's template; the teacher is the student
    text, res = exported(run, "swift", f"self:template={template}|fkl", tmp_path, "opsd.sh")
    flags = swift_flags(text)
    assert flags["rlhf_type"] == "gkd" and flags["beta"] == "0.0" and "teacher_model" not in flags
    assert f"#   {json.dumps(TEMPLATE)}\n" in text and "teacher_prompt" in text
    assert "no resolved alignment" in res.stderr  # this teacher equals the student on the exact engine


def test_verl_outputs(run, tmp_path):
    for label, loss in [
        (f"{SHARPER}|fkl_topk:k=3", {"loss_mode": "forward_kl_topk", "topk": 3, "use_policy_gradient": False}),
        (f"{FLATTER}|rkl_sampled", {"loss_mode": "k1", "use_policy_gradient": True}),
        (f"{FLATTER}|k3_loss", {"loss_mode": "k3", "use_policy_gradient": False}),
    ]:
        text, _ = exported(run, "verl", label, tmp_path)
        cfg = yaml.safe_load(text)
        assert cfg["distillation"] == {
            "enabled": True, "distillation_loss": {**loss, "use_task_rewards": False},
            "teacher_models": {"teacher_model": {"model_path": label.split("|")[0].removeprefix("model=")}},
        }
        assert cfg["actor_rollout_ref"]["rollout"] == {"temperature": 1.0, "top_p": 1.0}
        assert cfg["actor_rollout_ref"]["model"]["path"] == "exact" and cfg["data"]["max_response_length"] == 8
        # the header's command-line overrides say the same
        overrides = dict(line[4:].split("=", 1) for line in text.splitlines() if line.startswith("#   "))
        flat = export.base.flatten(cfg)
        assert set(overrides) == set(flat) and all(yaml.safe_load(overrides[k]) == v for k, v in flat.items())


def test_nemo_rl_outputs(run, tmp_path):
    for label, loss in [
        (f"{FLATTER}|rkl_topk:k=3,support=teacher", {"kl_type": "reverse", "zero_outside_topk": False}),
        (f"{SHARPER}|fkl_topk:k=3", {"kl_type": "forward", "zero_outside_topk": True}),
    ]:
        cfg = yaml.safe_load(exported(run, "nemo-rl", label, tmp_path)[0])
        assert cfg["loss_fn"] == loss and cfg["distillation"] == {"topk_logits_k": 3}
        assert cfg["policy"] == {"model_name": "exact",
                                 "generation": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}}
        assert cfg["teacher"] == {"model_name": label.split("|")[0].removeprefix("model="),
                                  "generation": {"temperature": 1.0}}


def test_json_output(run, tmp_path, template):
    spec = json.loads(exported(run, "json", f"self:template={template}|rkl_topk:k=3,support=teacher", tmp_path)[0])
    assert spec["teacher"] == {"label": f"self:template={template}", "self_distillation": True, "model": "exact",
                               "context": f"template={template}", "messages": [{"role": "user", "content": TEMPLATE}]}
    assert spec["objective"] == {"label": "rkl_topk:k=3,support=teacher", "name": "rkl_topk",
                                 "params": {"k": 3, "support": "teacher"}, "needs": "topk", "sampled_token": False}
    assert (spec["temperature"], spec["teacher_temperature"], spec["top_p"], spec["max_new_tokens"]) == (1, 1, 1, 8)
    assert spec["student"] == {"name": "exact", "model": "exact"} and spec["on_policy"] is True
    assert spec["run"]["dir"] == str(run) and spec["run"]["task"] == "digitsum" and spec["chosen"] == "requested"
    assert spec["alignment"]["mean"] is None  # no signal: the template teacher is the student on this engine
    label = f"{SHARPER}|rkl_sampled"
    spec = json.loads(exported(run, "json", label, tmp_path)[0])
    a, row = spec["alignment"], read_summary(run).table.query("metric == 'cos_full' and config == @label").iloc[0]
    assert (a["mean"], a["ci_low"], a["ci_high"], a["rank"]) == pytest.approx(
        (row["mean"], row["ci_low"], row["ci_high"], row["rank"]))
    assert spec["objective"]["sampled_token"] is True and spec["teacher"]["messages"] is None


# ---- what a trainer cannot express, and bad input --------------------------------------------------------


@pytest.mark.parametrize("to, label, closest", [
    ("trl", "self:template={template}|rkl", f"{FLATTER}|rkl"),  # a context the trainer cannot build
    ("trl", f"{FLATTER}|rkl_sampled", f"{FLATTER}|rkl"),  # an objective it lacks: the same expectation
    ("swift", f"{SHARPER}|fkl_topk:k=3", f"{SHARPER}|fkl"),
    ("verl", f"{FLATTER}|rkl", f"{FLATTER}|rkl_sampled"),
    ("nemo-rl", f"{FLATTER}|rkl", f"{FLATTER}|rkl_topk:k=3,support=teacher"),
])
def test_an_inexpressible_configuration_is_one_line_naming_the_closest(run, template, to, label, closest):
    label = label.format(template=template)
    line = one_error_line(cli(run, "--to", to, "--config", label))
    assert line.startswith(f"error: {label} cannot be expressed in {export.get(to).title}: ")
    assert f"closest supported configuration in this run: {closest} ({standing(run, closest)})" in line
    assert f"--config {shlex.quote(closest)}" in line
    assert not (run / export.get(to).filename).exists()


def test_bad_input_is_one_error_line(run, tmp_path):
    assert "has no configuration 'nope|rkl'" in one_error_line(cli(run, "--to", "trl", "--config", "nope|rkl"))
    assert "is it a diagnose run directory" in one_error_line(cli(tmp_path, "--to", "trl"))
    assert "unknown trainer 'axolotl'; available: trl, trl-distill, swift, verl, nemo-rl, json" in one_error_line(
        cli(run, "--to", "axolotl"))
    assert "is not a directory" in one_error_line(cli(run, "--to", "json", "--out", tmp_path / "no" / "x.json"))
    assert "--metric must be one of" in one_error_line(cli(run, "--to", "json", "--metric", "cos_nope"))
    assert not list(tmp_path.rglob("*"))


def test_warnings_where_a_trainer_trains_otherwise(run):
    """Temperatures and top_p a trainer handles otherwise than the run scored them: one warning each."""
    view = export.read_run(run)

    def warnings(to, label, **config):
        other = dataclasses.replace(view, config=dataclasses.replace(view.config, **config))
        return export.get(to).warnings(other.spec(label))

    rkl, topk = f"{FLATTER}|rkl", f"{FLATTER}|fkl_topk:k=3"
    assert warnings("trl", rkl) == [] and warnings("swift", rkl) == [] and warnings("verl", topk) == []
    trl = warnings("trl", rkl, temperature=0.7, top_p=0.9)
    assert len(trl) == 2 and "untempered logits" in trl[0] and "top_p 0.9" in trl[1]
    assert warnings("swift", rkl, temperature=0.7) == []  # ms-swift divides both by its temperature, as the run did
    assert "teacher at 1" in warnings("swift", rkl, temperature=0.7, teacher_temperature=1.0)[0]
    assert warnings("verl", topk, temperature=0.7, teacher_temperature=1.0) == []  # verl's teacher is at 1
    assert "--teacher-temperature 1" in warnings("verl", topk, temperature=0.7)[0]
    assert warnings("nemo-rl", topk, temperature=0.7, teacher_temperature=1.3) == []  # its teacher has its own
    assert warnings("trl-distill", rkl, temperature=0.7, top_p=0.9) == []  # it tempers its loss and samples top_p
    assert "teacher at 1" in warnings("trl-distill", rkl, temperature=0.7, teacher_temperature=1.0)[0]


# ---- TRL itself (the `trl` extra) ------------------------------------------------------------------------


def test_trl_output_builds_gkdconfig(run, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd", reason="TRL is an optional extra: pip install 'diagnose[trl]'")
    kw = yaml.safe_load(exported(run, "trl", f"{SHARPER}|jsd:beta=0.3", tmp_path)[0])
    student = kw.pop("model_name_or_path")
    args = gkd.GKDConfig(output_dir=str(tmp_path / "gkd"), report_to="none", use_cpu=True, **kw)  # bf16 needs a GPU
    assert student == "exact" and args.teacher_model_name_or_path == "exact:scale=4.0"
    assert (args.beta, args.lmbda, args.temperature, args.max_new_tokens, args.seq_kd) == (0.3, 1.0, 1.0, 8, False)


def test_trl_loss_gradient_is_the_diagnosed_direction(run, tmp_path, monkeypatch):
    """GKDTrainer's loss (its generalized_jsd_loss as compute_loss calls it: no temperature argument) with the
    exported beta, differentiated by autograd: -dL/dz equals the objective's d on the same logits within 1e-4.
    The run's temperature is 1, what the exporter wrote and the only one at which TRL's loss is the sampled
    policy's; at another temperature T, TRL's loss function given T is d at z/T (scaled by 1/T)."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd", reason="TRL is an optional extra: pip install 'diagnose[trl]'")
    gen = torch.Generator().manual_seed(0)
    z, zt = (3 * torch.randn(32, 50, generator=gen) for _ in range(2))

    def trl_direction(beta, **kw):
        s = z.clone().requires_grad_(True)
        gkd.GKDTrainer.generalized_jsd_loss(s, zt, beta=beta, reduction="sum", **kw).backward()
        return -s.grad

    for objective in ("rkl", "fkl", "jsd:beta=0.3"):
        kw = yaml.safe_load(exported(run, "trl", f"{FLATTER}|{objective}", tmp_path)[0])
        assert kw["temperature"] == 1.0
        d = objectives.parse(objective).direction(z, zt)
        torch.testing.assert_close(trl_direction(kw["beta"]), d, atol=1e-4, rtol=0)
        t = 0.7
        d_t = objectives.parse(objective).direction(z / t, zt / t)
        torch.testing.assert_close(t * trl_direction(kw["beta"], temperature=t), d_t, atol=1e-4, rtol=0)


def test_trl_distillation_output_and_loss(run, tmp_path, monkeypatch):
    """TRL's DistillationTrainer: DistillationConfig from the exported file, and its loss (the chunked divergence
    its compute_loss calls, on hidden states with an identity lm_head, so they are the logits) at the exported
    beta and temperature: -dL/dz is the objective's d at z/T, times 1/T, per token (the loss is a token mean)."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trl = pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'diagnose[trl]'")
    trainer = pytest.importorskip("trl.trainer.distillation_trainer")
    if not hasattr(trl, "DistillationConfig") or not hasattr(trainer, "_chunked_divergence_loss"):
        pytest.skip(f"TRL {trl.__version__} has no DistillationTrainer with a chunked divergence loss")
    kw = yaml.safe_load(exported(run, "trl-distill", f"{FLATTER}|jsd:beta=0.3", tmp_path)[0])
    student = kw.pop("model_name_or_path")
    args = trl.DistillationConfig(output_dir=str(tmp_path / "d"), report_to="none", use_cpu=True, **kw)
    assert student == "exact" and args.teacher_model_name_or_path == "exact:scale=1.0"
    assert (args.beta, args.temperature, args.top_p, args.top_k, args.max_completion_length) == (0.3, 1.0, 1.0, 0, 8)
    gen = torch.Generator().manual_seed(1)
    n, vocab = 24, 40
    z, zt = (3 * torch.randn(1, n, vocab, generator=gen) for _ in range(2))
    eye = torch.eye(vocab)
    for objective in ("rkl", "fkl", "jsd:beta=0.3"):
        beta = yaml.safe_load(exported(run, "trl-distill", f"{FLATTER}|{objective}", tmp_path)[0])["beta"]
        for t in (args.temperature, 0.7):
            h = z.clone().requires_grad_(True)
            loss, _, _ = trainer._chunked_divergence_loss(h, zt, eye, eye, torch.ones(1, n), beta, temperature=t)
            loss.backward()
            d = objectives.parse(objective).direction(z[0] / t, zt[0] / t)
            torch.testing.assert_close(-h.grad[0] * n * t, d, atol=1e-4, rtol=0)
