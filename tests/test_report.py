"""The run report (``duet report``): a run directory written by the real :class:`RunLog` from
hand-built episodes (two GRPO-like steps with reward components, a PPO-like learner with value and
advantage figures, two syncs, three evaluations, transcripts with images), then the report.

Checked against the files themselves: every plotted series equals ``metrics.parquet`` read here on
its own with pyarrow, every per-step series of the file is plotted, hand-computed component means,
the page is self-contained (every ``<img>`` a ``data:`` URI, no http or file references) and holds
the recipe, every transcript line and every saved image, and a failed drawing is one line, never the
run's end.
"""

import base64
import html
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.progress import RunLog
from cluster.report.series import read_rows, report_panels
from cluster.report.transcripts import load_transcripts
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.transcript import with_transcript
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.unit

RECIPE = {"name": "report-unit", "train": {"steps": 2}, "note": "<b>escaped & kept</b>"}


@dataclass(frozen=True)
class Sync:  # what RunLog.sync reads of a weight_sync.SyncReport
    role: str
    version: int
    latency_s: float
    proven: tuple[str, ...]
    probe_gap: float


@dataclass(frozen=True)
class Stats:
    tokens_per_s: float


def png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png((220, 30, 30)), png((30, 30, 220))


def episode(i: int, image: bytes, reward: float, fmt: float) -> Episode:
    turn = Turn("policy", (1, 2), (3,), (-0.5,), 1, text=f"<answer>red{i}</answer>", image_hashes=(image_hash(image),))
    ep = Episode(f"e{i}", f"g{i}", f"t{i}", (turn,), reward=reward, reward_components={"exact": reward, "format": fmt},
                 success=reward > 0, answer=f"red{i}")
    return with_transcript(ep, Task(f"t{i}", "what colour?\nsay it", f"red{i}"))


def batch(rewards: list[float]) -> EpisodeBatch:
    eps = tuple(episode(i, (RED, BLUE)[i % 2], r, 0.5 + 0.25 * i) for i, r in enumerate(rewards))
    return EpisodeBatch(eps, {image_hash(RED): RED, image_hash(BLUE): BLUE})


LEARNER = [{"loss/policy": -0.1, "loss/value": 0.8, "loss/total": 0.7, "policy/entropy": 1.5, "kl/ref": 0.01,
            "policy/approx_kl": 0.002, "value/explained_variance": -0.4, "adv/mean": 0.0, "adv/std": 1.0,
            "batch/tokens": 40.0, "time/step": 1.25},
           {"loss/policy": -0.2, "loss/value": 0.5, "loss/total": 0.3, "policy/entropy": 1.25, "kl/ref": 0.03,
            "policy/approx_kl": 0.004, "value/explained_variance": 0.2, "adv/mean": 0.0, "adv/std": 0.5,
            "batch/tokens": 44.0, "time/step": 1.5}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report") / "run"
    log = RunLog(d, transcripts_per_step=2, print_lines=False)
    (d / "recipe.json").write_text(json.dumps(RECIPE))
    log.event("run report-unit: hand-built")
    log.evaluation("base", {"episodes": 2.0, "reward": 0.0, "success": 0.0}, batch([0.0, 0.0]))
    log.evaluation("before_rl", {"episodes": 2.0, "reward": 0.5, "success": 0.5}, batch([1.0, 0.0]))
    for step, rewards in enumerate(([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])):
        sync = Sync("policy", step + 2, 0.05 * (step + 1), ("w0", "w1"), 1e-6 * (step + 1))
        log.sync(sync)
        log.step(step, batch(rewards), [Stats(100.0), Stats(20.0)], {"policy": LEARNER[step]}, {"policy": sync},
                 {"policy": step + 2}, {"time/sample": 0.5, "time/step": 2.0 + step})
    log.evaluation("after_rl", {"episodes": 2.0, "reward": 1.0, "success": 1.0}, batch([1.0, 1.0]))
    log.write_summary({"completed": True, "steps": 2})
    from cluster.report import write_report

    write_report(d)
    return d


def parquet_rows(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "metrics.parquet").to_pylist()


def test_component_means_are_written_per_step_and_per_evaluation(run_dir):
    rows = parquet_rows(run_dir)
    fmt = [(r["step"], r["value"]) for r in rows if r["scope"] == "rollout" and r["name"] == "reward/format"]
    # three episodes per step with format 0.5, 0.75, 1.0 -> mean 0.75; exact = mean reward
    assert fmt == [(0, 0.75), (1, 0.75)]
    exact = [r["value"] for r in rows if r["scope"] == "rollout" and r["name"] == "reward/exact"]
    assert exact == pytest.approx([1 / 3, 2 / 3])
    after = {r["name"]: r["value"] for r in rows if r["scope"] == "eval/after_rl"}
    assert after == {"episodes": 2.0, "reward": 1.0, "success": 1.0, "reward/exact": 1.0, "reward/format": 0.625}


def test_every_plotted_series_equals_the_parquet_file(run_dir):
    rows = parquet_rows(run_dir)
    panels = report_panels(read_rows(run_dir / "metrics.parquet"))
    plotted = set()
    for panel in panels.values():
        for s in panel.series.values():
            if s.scope == "eval/*":
                labels = [panel.categories[int(i)] for i in s.x]
                assert list(s.y) == [next(r["value"] for r in rows if r["scope"] == f"eval/{lab}" and r["name"] == s.name)
                                     for lab in labels]
            elif s.scope.startswith("sync/"):
                mine = [r for r in rows if r["scope"] == s.scope]
                assert list(s.x) == [r["value"] for r in mine if r["name"] == "version"]
                assert list(s.y) == [r["value"] for r in mine if r["name"] == s.name]
            else:
                points = sorted((r["step"], r["value"]) for r in rows
                                if r["step"] >= 0 and r["scope"] == s.scope and r["name"] == s.name)
                assert list(zip(s.x, s.y)) == [(float(a), b) for a, b in points]
                plotted.add((s.scope, s.name))
    assert plotted == {(r["scope"], r["name"]) for r in rows if r["step"] >= 0}  # every per-step series drawn
    assert panels["Held-out success"].categories == ("base", "before_rl", "after_rl")
    assert panels["Held-out success"].series["held-out success"].y == (0.0, 0.5, 1.0)
    assert panels["Held-out reward"].series["held-out reward"].y == (0.0, 0.5, 1.0)
    assert panels["Episodes per step and in flight"].series["episodes"].y == (3.0, 3.0)
    assert panels["Value explained variance (PPO)"].series["value/explained_variance"].y == (-0.4, 0.2)
    assert set(panels["Advantages"].series) == {"adv/mean", "adv/std"}
    assert set(panels["KL"].series) == {"kl/ref", "policy/approx_kl"}
    assert panels["Adapter sync latency"].series["policy"].y == (0.05, 0.1)
    assert panels["Workers that proved each sync"].series["policy"] == \
        panels["Workers that proved each sync"].series["policy"].__class__((2.0, 3.0), (2.0, 2.0), "sync/policy", "proven_workers")
    # time/step exists in both scopes: the legend tells them apart
    assert set(panels["Step time"].series) == {"time/sample", "time/step [rollout]", "time/step [learner/policy]"}
    assert "Staleness and dropped episodes" not in panels  # absent from this run: skipped quietly


def test_pngs_beside_the_page_are_the_panels(run_dir):
    panels = report_panels(read_rows(run_dir / "metrics.parquet"))
    pngs = sorted(p.name for p in (run_dir / "report").glob("*.png"))
    assert len(pngs) == len(panels)
    for p in (run_dir / "report").glob("*.png"):
        with Image.open(p) as img:
            assert img.size == (640, 340)
            assert len(img.convert("RGB").getcolors(1 << 20)) > 20  # lines, text, antialiasing: not a blank canvas


def test_transcript_images_are_saved_by_hash(run_dir):
    folder = run_dir / "transcripts" / "step_00001"
    assert (folder / f"{image_hash(RED)}.png").read_bytes() == RED
    assert (folder / f"{image_hash(BLUE)}.png").read_bytes() == BLUE
    index = json.loads((folder / "images.json").read_text())
    assert index == {"episodes": [{"turns": [[image_hash(RED)]]}, {"turns": [[image_hash(BLUE)]]}]}
    step = next(t for t in load_transcripts(run_dir) if t.name == "step_00001")
    assert [[i.hash for line in ep for i in line.images] for ep in step.episodes] == [[image_hash(RED)], [image_hash(BLUE)]]
    assert step.episodes[0][0].text.startswith("[task] t0: what colour?\\nsay it") and not step.episodes[0][0].images


def test_page_is_self_contained_with_recipe_transcripts_and_images(run_dir):
    page = (run_dir / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "file:" not in page
    srcs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert len(srcs) == page.count("<img ") and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<(link|script|iframe)\b", page) and "url(" not in page
    panels = report_panels(read_rows(run_dir / "metrics.parquet"))
    transcripts = load_transcripts(run_dir, ("base", "before_rl", "after_rl"))
    turn_images = [i for t in transcripts for ep in t.episodes for line in ep for i in line.images]
    assert len(srcs) == len(panels) + len(turn_images) == len(panels) + 5 * 2
    decoded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert {RED, BLUE} <= decoded
    assert html.escape(json.dumps(RECIPE, indent=2)) in page
    names = sorted(p.stem for p in (run_dir / "transcripts").glob("*.txt"))
    assert [t.name for t in transcripts] == ["eval_base", "eval_before_rl", "eval_after_rl", "step_00000", "step_00001"]
    assert sorted(t.name for t in transcripts) == names
    for p in (run_dir / "transcripts").glob("*.txt"):
        for line in p.read_text().splitlines():
            assert html.escape(line) in page
    assert "held-out success 0.500 &rarr; 1.000 (+50.0 points)" in page


def test_a_failed_drawing_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import cluster.report

    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(cluster.report, "write_report", broken)
    log = RunLog(tmp_path, 1, print_lines=False, report=True)
    log.evaluation("base", {"episodes": 1.0, "reward": 0.0, "success": 0.0}, batch([0.0]))
    assert capsys.readouterr().err == "[duet] report not drawn: RuntimeError: no fonts\n"
    assert (tmp_path / "metrics.parquet").is_file()


def test_cli_report_draws_the_page_and_refuses_a_directory_without_metrics(run_dir, tmp_path):
    out = tmp_path / "out"
    ok = subprocess.run([sys.executable, "-m", "cluster.cli", "report", str(run_dir), "--out", str(out)],
                        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out / "index.html") and (out / "index.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "cluster.cli", "report", str(tmp_path / "nothing")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and "no metrics.parquet" in bad.stderr


def test_report_modules_import_no_heavy_or_plotting_framework_until_drawing():
    code = ("import sys\nimport cluster.report, cluster.report.series, cluster.report.transcripts, cluster.progress, cluster.cli\n"
            "print(','.join(sorted(m for m in ('ray', 'vllm', 'deepspeed', 'matplotlib') if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == ""


def test_a_run_with_only_events_still_draws_a_page(tmp_path):
    from cluster.report import write_report

    log = RunLog(tmp_path, 0, print_lines=False)
    log.event("run started: nothing else yet")
    log.flush()
    page = write_report(tmp_path).read_text()
    assert "<img " not in page and not list((tmp_path / "report").glob("*.png"))
    assert "run started: nothing else yet" in page and "Transcripts" not in page
