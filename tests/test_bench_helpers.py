"""Pure helpers of the benchmark suite (deploy/bench): statistics, table formatting, /proc parsing,
step figures of a run's metric rows. Hand-computed values in the comments."""

import json
import math
from dataclasses import asdict

import pytest

from deploy.bench.duet_run import phase_of, step_figures
from deploy.bench.generation import generated_length, left_pad
from deploy.bench.machine import cpu_model, mem_total_gib
from deploy.bench.memory import RolePeak, role_of, role_peaks, vm_hwm_kib
from deploy.bench.overlap import sync_split
from deploy.bench.report import Check, Section, fmt, markdown_table, render_json, render_markdown, targets_table
from deploy.bench.stats import percentile, ratio, steady, summarize, throughput

pytestmark = pytest.mark.unit


# ---- stats ---------------------------------------------------------------------------------------

def test_percentile_interpolates_linearly():
    # sorted [1, 2, 3, 4]: rank of p50 = 0.5 * 3 = 1.5 -> 2 + 0.5 * (3 - 2) = 2.5
    assert percentile([4, 1, 3, 2], 50) == 2.5
    # p95: rank 0.95 * 3 = 2.85 -> 3 + 0.85 * (4 - 3) = 3.85
    assert percentile([4, 1, 3, 2], 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0


def test_percentile_matches_a_reference_loop():
    values = [0.31, 0.12, 0.55, 0.2, 0.47, 0.09, 0.33, 0.28, 0.6, 0.15, 0.41, 0.22, 0.38, 0.19, 0.5,
              0.26, 0.44, 0.11, 0.35, 0.3]
    s = sorted(values)
    for q in (0, 5, 50, 90, 95, 100):
        rank = q / 100 * (len(s) - 1)
        lo, frac = int(math.floor(rank)), rank - math.floor(rank)
        ref = s[lo] + frac * (s[min(lo + 1, len(s) - 1)] - s[lo])
        assert percentile(values, q) == pytest.approx(ref)


def test_percentile_refuses_empty_and_bad_q():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize():
    # [1, 2, 3, 4, 10]: mean 20 / 5 = 4; p50 = 3; p95 rank 0.95 * 4 = 3.8 -> 4 + 0.8 * 6 = 8.8
    s = summarize([3, 1, 10, 2, 4])
    assert (s.n, s.mean, s.p50, s.min, s.max) == (5, 4.0, 3.0, 1.0, 10.0)
    assert s.p95 == pytest.approx(8.8)


def test_steady_drops_warmup_and_refuses_nothing_left():
    assert steady([9.0, 1.0, 2.0], 1) == [1.0, 2.0]
    with pytest.raises(ValueError, match="warm-up"):
        steady([9.0, 1.0], 2)


def test_throughput_is_total_work_over_total_time():
    # 32 samples per step, steps of 1 s and 3 s: 64 samples / 4 s = 16 /s (a mean of rates would say 21.3)
    assert throughput(32, [1.0, 3.0]) == 16.0
    with pytest.raises(ValueError):
        throughput(32, [])


def test_ratio_handles_missing_figures():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


# ---- report --------------------------------------------------------------------------------------

def test_fmt_three_significant_digits():
    assert fmt(None) == "-"
    assert fmt(12) == "12"
    assert fmt(1234.5678) == "1235"        # >= 100: no decimals
    assert fmt(12.345) == "12.3"           # 2 integer digits: 1 decimal
    assert fmt(0.05551) == "0.0555"        # 3 significant digits
    assert fmt(0.0) == "0"
    assert fmt(2.5e-5) == "2.50e-05"
    assert fmt("x") == "x"


def test_markdown_table():
    text = markdown_table(("a", "b|c"), [(1, 0.5), ("x", None)])
    assert text.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | 0.500 |", "| x | - |"]


def test_section_checks_row_width():
    with pytest.raises(ValueError, match="2 cells, header 1"):
        Section("s", "S", ("a",), ((1, 2),))


def test_targets_table_and_round_trip_through_json():
    sec = Section("sync", "3. Sync", ("k",), ((1,),), (Check("p50 <= 0.5 s", "0.120 s", True),
                                                       Check("10x", "-", None)), ("a note",), {"x": [1.0]})
    assert targets_table([sec]).splitlines()[2:] == ["| p50 <= 0.5 s | 0.120 s | yes |", "| 10x | - | not measured |"]
    back = Section.from_dict(json.loads(json.dumps(asdict(sec))))
    assert back == sec


def test_render_markdown_and_json():
    machine = {"cpu_model": "AMD EPYC", "cores": 2, "ram_gib": 23.4, "versions": {"ray": "2.60.0"},
               "load_average": {"start": [1.0, 2.0, 3.0], "end": [4.0, 5.0, 6.0]}, "wall_s": 600.0}
    failed = Section("e2e", "1. E2E", error="Traceback ...\nRuntimeError: boom")
    text = render_markdown(machine, [failed], "python -m deploy.bench")
    assert "- CPU: AMD EPYC, 2 cores; RAM 23.4 GiB" in text
    assert "at start [1.0, 2.0, 3.0], at end [4.0, 5.0, 6.0]" in text
    assert "**Failed:** `Traceback ...\nRuntimeError: boom`" in text
    data = json.loads(render_json(machine, [failed]))
    assert data["machine"]["cores"] == 2 and data["sections"][0]["error"].endswith("boom")


# ---- machine and memory parsing ------------------------------------------------------------------

def test_cpu_model_and_memory_from_proc_texts():
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n") == "AMD EPYC 7B13"
    assert cpu_model("processor : 0\n") == "unknown"
    assert mem_total_gib("MemTotal:       25165824 kB\nMemFree: 1 kB\n") == 24.0  # 25165824 / 2^20


def test_vm_hwm_and_roles():
    assert vm_hwm_kib("Name:\tpython\nVmPeak:\t 900 kB\nVmHWM:\t  512000 kB\nVmRSS: 1 kB\n") == 512000
    assert vm_hwm_kib("Name: x\n") is None
    assert role_of("ray::RolloutWorkerHost.rollout") == "rollout worker"
    assert role_of("ray::RankActor") == "learner rank"
    assert role_of("ray::IDLE") is None and role_of("/usr/bin/raylet --x") is None


def test_role_peaks_group_by_role():
    # two workers of 1024 and 2048 MiB (kB = MiB * 1024): max 2048, sum 3072
    peaks = {11: ("rollout worker", 1024 * 1024), 12: ("rollout worker", 2048 * 1024), 13: ("learner rank", 512 * 1024)}
    assert role_peaks(peaks) == [RolePeak("learner rank", 1, 512.0, 512.0), RolePeak("rollout worker", 2, 2048.0, 3072.0)]


# ---- run figures ---------------------------------------------------------------------------------

def _rows():
    rows = [{"step": -1, "scope": "event", "name": "up", "value": 1.0}]
    for step, (total, sample, learner) in enumerate([(2.0, 1.5, 0.25), (1.0, 0.75, 0.125)]):
        rows += [{"step": step, "scope": "rollout", "name": "time/step", "value": total},
                 {"step": step, "scope": "rollout", "name": "time/sample", "value": sample},
                 {"step": step, "scope": "learner/policy", "name": "time/step", "value": learner},
                 {"step": step, "scope": "learner/policy", "name": "batch/samples", "value": 32.0}]
    return rows


def test_step_figures_and_phase():
    figures = step_figures(_rows())
    assert sorted(figures) == [0, 1]  # the event row (step -1) is left out
    phase = phase_of(figures, "sync", 0, 2)
    assert phase.step_s == (2.0, 1.0) and phase.sample_s == (1.5, 0.75)
    assert phase.learner_s == (0.25, 0.125) and phase.samples == (32.0, 32.0)
    with pytest.raises(KeyError):
        phase_of(figures, "sync", 0, 3)


def test_sync_split_generation_and_training():
    phase = phase_of(step_figures(_rows()), "sync", 0, 2)
    # warm-up 1 leaves step 1: generation 0.75 s, training 1.0 - 0.75 = 0.25 s
    assert sync_split(phase, 1) == ([0.75], [0.25])


# ---- generation helpers --------------------------------------------------------------------------

def test_generated_length_counts_through_the_first_stop():
    assert generated_length([5, 6, 2, 7], {2, 3}) == 3
    assert generated_length([5, 6, 7], {2}) == 3
    assert generated_length([3], {3}) == 1


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], 0)
    assert ids == [[1, 2, 3], [0, 0, 4]] and mask == [[1, 1, 1], [0, 0, 1]]


# ---- sections built from hand-made figures -------------------------------------------------------

def _phase(mode, step_s, sample_s, learner_s=None):
    from deploy.bench.duet_run import Phase

    n = len(step_s)
    return Phase(mode, 0, n, tuple(step_s), tuple(sample_s), tuple(learner_s or [0.1] * n), (32.0,) * n)


def test_e2e_section_samples_per_second_and_best_trl():
    from deploy.bench.e2e import section
    from deploy.bench.settings import E2ESettings

    e2e = E2ESettings(tasks_per_step=4, group_size=8, warmup_steps=1, steps=2)  # 32 samples per step
    duet = _phase("sync", [9.0, 0.5, 1.5], [0.1, 0.2, 0.3])     # steady: 0.5 + 1.5 = 2 s for 64 -> 32 /s
    trl = {1: {"step_s": [20.0, 4.0, 4.0], "startup_s": 5.0},   # 64 / 8 s = 8 /s
           2: {"step_s": [20.0, 8.0, 8.0], "startup_s": 6.0}}   # 64 / 16 s = 4 /s
    sec = section(e2e, duet, 60.0, trl)
    assert [row[5] for row in sec.rows] == [32.0, 8.0, 4.0, 4.0]   # ratio vs the faster TRL: 32 / 8
    assert sec.rows[3][0] == "ratio duet-rl / best TRL (1 thread(s))"
    assert sec.checks[0].met is True and sec.checks[0].measured == "4.00x"


def test_overlap_section_ratio_to_max_of_generation_and_training():
    from deploy.bench.duet_run import DuetRun
    from deploy.bench.overlap import section
    from deploy.bench.settings import BenchSettings, OverlapSettings

    cfg = BenchSettings(overlap=OverlapSettings(warmup_steps=1, steps=2))
    # sync steady steps: step 1.0 and 1.2 s, generation 0.4 and 0.4 s -> training 0.6 and 0.8 (mean 0.7)
    sync = _phase("sync", [5.0, 1.0, 1.2], [3.0, 0.4, 0.4])
    # async steady steps 0.70 and 0.84 (mean 0.77): 0.77 / max(0.4, 0.7) = 1.1; vs sync mean 1.1: 0.77 / 1.1 = 0.7
    asyn = _phase("async", [2.0, 0.70, 0.84], [1.0, 0.0, 0.0])
    sec = section(cfg, DuetRun(1.0, (sync, asyn), (), 100.0))
    figures = {row[0]: row[2] for row in sec.rows}
    assert figures["max(generation, training)"] == pytest.approx(0.7)
    assert figures["async step / max(generation, training)"] == pytest.approx(1.1)
    assert figures["async step / sync step"] == pytest.approx(0.7)
    assert sec.checks[0].met is True and sec.checks[0].measured == "1.10x"
