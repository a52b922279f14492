"""The run report end to end: a real tiny run through ``duet train`` (the ``smoke`` recipe: real
vLLM worker, real DeepSpeed learner, its own local Ray), which draws ``report/`` at its end; then
``duet report RUN_DIR --out artifacts/report_e2e`` through the CLI; then the page loaded in a real
headless browser (Debian's ``chromium``). The run is the piped one of :mod:`observed_run` (two
transcripts a step, every tracker on), shared with tests/test_e2e_watching.py.

Checked: the series the report plots equal ``metrics.parquet`` read here; every transcript and its
images are on the page; in Chromium the screenshot is a real render (thousands of colours, the
plots' line colour present, over 5% of the pixels drawn) and every ``<img>`` (plots and dialogue
images) loaded with a non-zero natural width. The page, its PNGs and the screenshot stay in
``artifacts/report_e2e/`` (git-ignored) for a person to look at.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from observed_run import piped_run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "report_e2e"
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const d = document.createElement("div"); d.id = "img-check"; d.textContent = ok + "/" + imgs.length;
  document.body.appendChild(d);
});
</script>"""


def duet(*args: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory, models_dir):
    run_dir, train = piped_run(tmp_path_factory, models_dir)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    report = duet("report", str(run_dir), "--out", str(ARTIFACTS), timeout=300)
    return run_dir, train, report


def test_train_draws_the_report_at_its_end(run):
    run_dir, train, _ = run
    assert "report not drawn" not in train.stderr
    page = (run_dir / "report" / "index.html").read_text()
    assert "&quot;completed&quot;: true" in page  # drawn after summary.json was written, i.e. at the very end
    assert "Held-out success" in page and (run_dir / "report" / "held_out_success.png").is_file()


def test_cli_report_plots_the_parquet_series_and_every_transcript(run):
    run_dir, _, report = run
    from cluster.report.series import read_rows, report_panels
    from cluster.report.transcripts import load_transcripts

    assert report.stdout.strip() == str(ARTIFACTS / "index.html")
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    panels = report_panels(read_rows(run_dir / "metrics.parquet"))
    plotted = {(s.scope, s.name): s for p in panels.values() for s in p.series.values() if s.scope.startswith(("rollout", "learner/"))}
    assert set(plotted) == {(r["scope"], r["name"]) for r in rows if r["step"] >= 0}
    for (scope, name), s in plotted.items():
        assert list(zip(s.x, s.y)) == sorted((float(r["step"]), r["value"]) for r in rows
                                             if r["step"] >= 0 and r["scope"] == scope and r["name"] == name)
    assert {"Reward (training episodes)", "KL", "Entropy", "Losses", "Adapter sync latency",
            "Workers that proved each sync", "Held-out success"} <= set(panels)
    latency = [r["value"] for r in rows if r["scope"] == "sync/policy" and r["name"] == "latency_s"]
    assert panels["Adapter sync latency"].series["policy"].y == tuple(latency)
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == sorted(
        re.sub(r"[^a-z0-9]+", "_", t.lower()).strip("_") + ".png" for t in panels)
    page = (ARTIFACTS / "index.html").read_text()
    transcripts = load_transcripts(run_dir)
    images = {i.hash for t in transcripts for ep in t.episodes for line in ep for i in line.images}
    assert {"eval_base", "eval_before_rl", "eval_after_rl", "step_00000", "step_00001"} <= {t.name for t in transcripts}
    assert images, "the smoke run's turns show images: the transcripts must carry them"
    assert all(f'title="{h}"' in page for h in images)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (deploy/test.sh installs it with apt-get when run as root)")
    return path


def browser(*args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_page_renders_in_headless_chromium_with_plots_and_images(run):
    from PIL import Image

    html = (ARTIFACTS / "index.html").read_text()
    check = ARTIFACTS / "loaded_check.html"
    check.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = browser("--virtual-time-budget=10000", "--dump-dom", check.as_uri()).stdout
    loaded, total = map(int, re.search(r'<div id="img-check">(\d+)/(\d+)</div>', dom).groups())
    assert total == html.count("<img ") and total > 10 and loaded == total
    shot = ARTIFACTS / "screenshot.png"
    browser(f"--screenshot={shot}", "--window-size=1280,4000", (ARTIFACTS / "index.html").as_uri())
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 4000)
        colours = rgb.getcolors(1 << 24)
    assert len(colours) > 1000  # text, antialiased plot lines, images: not a blank page
    counts = {c: n for n, c in colours}
    blank = sum(n for c, n in counts.items() if min(c) >= 248)  # white plot canvases and the page colour
    assert blank < 0.95 * 1280 * 4000  # over 5% of the pixels drawn (9.4% on the smoke run's page)
    blue = sum(n for (r, g, b), n in counts.items() if abs(r - 31) < 20 and abs(g - 119) < 20 and abs(b - 180) < 20)
    assert blue > 1000  # matplotlib's first line colour (#1f77b4): the plots rendered
