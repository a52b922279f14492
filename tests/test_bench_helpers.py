"""Pure helpers of the benchmark suite (deploy/bench): statistics, table formatting, /proc parsing,
step figures of a run's metric rows. Hand-computed values in the comments."""

import json
import math
from dataclasses import asdict

import pytest

from deploy.bench.duet_run import phase_of, step_figures, sync_latencies
from deploy.bench.generation import generated_length, left_pad
from deploy.bench.machine import cpu_model, mem_total_gib
from deploy.bench.memory import RolePeak, role_of, role_peaks, vm_hwm_kib
from deploy.bench.overlap import sync_split
from deploy.bench.report import (ISSUE_TARGETS, Check, Section, fmt, markdown_table, render_json, render_markdown,
                                 targets_table, unmeasured)
from deploy.bench.repeat import Side, column, interleave, load_cell
from deploy.bench.stats import Spread, paired_ratios, percentile, ratio, ratio_spread, spread, steady, summarize, throughput

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


def test_spread_is_median_and_range():
    assert spread([3.0, 1.0, 2.0]) == Spread(3, 2.0, 1.0, 3.0)
    assert spread([4.0, 1.0, 2.0, 10.0]) == Spread(4, 3.0, 1.0, 10.0)   # even n: (2 + 4) / 2
    with pytest.raises(ValueError):
        spread([])


def test_ratios_are_taken_inside_each_repetition():
    # reps (duet, TRL): (60, 20) -> 3.0, (40, 20) -> 2.0, (90, 36) -> 2.5; median 2.5, range 2.0-3.0
    assert paired_ratios([60.0, 40.0, 90.0], [20.0, 20.0, 36.0]) == [3.0, 2.0, 2.5]
    s = ratio_spread([60.0, 40.0, 90.0], [20.0, 20.0, 36.0])
    assert s == Spread(3, 2.5, 2.0, 3.0)
    # the ratio of the medians would be 60 / 20 = 3.0, not the median ratio 2.5
    assert s.text() == "2.50x (2.00-3.00x, 3 reps)"
    assert Spread(3, 0.0456, 0.04, 0.05).text(" s", 3) == "0.046 s (0.040-0.050 s, 3 reps)"
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_ratios([1.0], [0.0])


# ---- interleaved repetitions ---------------------------------------------------------------------

def test_interleave_runs_a_b_a_b_with_the_load_beside_each_run():
    order, loads = [], iter(float(i) for i in range(100))
    reps = interleave(3, [("A", lambda rep: order.append(("A", rep)) or rep * 10),
                          ("B", lambda rep: order.append(("B", rep)) or rep * 100)],
                      lambda: (next(loads), 0.5, 0.25))
    assert order == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert [s.result for s in column(reps, "B")] == [0, 100, 200]
    first = reps[0][0]
    assert (first.name, first.rep, first.load_start, first.load_end) == ("A", 0, (0.0, 0.5, 0.25), (1.0, 0.5, 0.25))
    assert reps[1][1].load_start == (6.0, 0.5, 0.25)   # 4 readings per repetition: start and end of A and B
    with pytest.raises(KeyError):
        column(reps, "C")
    with pytest.raises(ValueError):
        interleave(0, [("A", lambda rep: rep)], lambda: (0.0,))
    assert load_cell((1.2, 1.456, 1.5)) == "1.20 / 1.46 / 1.50"


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
                                                       Check("10x", "-", None, "sync-smollm2")), ("a note",), {"x": [1.0]})
    lines = targets_table([sec]).splitlines()[2:]
    assert len(lines) == len(ISSUE_TARGETS) + 1   # every issue-13 target, then the extra check
    by_target = {line.split(" | ")[0][2:]: line for line in lines}
    assert by_target["10x"] == "| 10x | - | not measured |"   # measured by its section (key), in the issue's order
    assert lines.index(by_target["10x"]) == [k for k, _, _ in ISSUE_TARGETS].index("sync-smollm2")
    assert lines[-1] == "| p50 <= 0.5 s | 0.120 s | yes |"
    assert "not measured: the e2e benchmark was not run" in lines[0]
    assert "not measured here: the default run is `duet train`" in lines[-2]
    back = Section.from_dict(json.loads(json.dumps(asdict(sec))))
    assert back == sec


def test_unmeasured_target_names_the_failed_benchmark():
    failed_sec = Section("e2e", "1a. E2E", error="Traceback ...\nRuntimeError: boom")
    assert unmeasured("e2e", [failed_sec]) == "not measured: the e2e benchmark failed (RuntimeError: boom)"
    assert unmeasured("rollout", [failed_sec]) == "not measured: the rollout benchmark was not run"


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

def _phase(mode, step_s, sample_s, learner_s=None, sync_s=()):
    from deploy.bench.duet_run import Phase

    n = len(step_s)
    return Phase(mode, 0, n, tuple(step_s), tuple(sample_s), tuple(learner_s or [0.1] * n), (32.0,) * n, tuple(sync_s))


def _run(sync_phase, async_phase=None):
    from deploy.bench.duet_run import DuetRun

    return DuetRun(60.0, (sync_phase,) + ((async_phase,) if async_phase else ()), (), 100.0)


def test_e2e_section_median_of_per_repetition_ratios_against_the_faster_trl():
    from deploy.bench.e2e import section
    from deploy.bench.settings import E2ESettings

    e2e = E2ESettings(tasks_per_step=4, group_size=8, warmup_steps=1, steps=2, trl_threads=(1, 2))  # 32 per step
    load = (1.0, 1.0, 1.0)

    def rep(k, duet_steps, trl1, trl2):
        return [Side("duet-rl", k, _run(_phase("sync", duet_steps, [0.1] * 3)), load, load, 1.0),
                Side("TRL 1 thread(s)", k, {"step_s": trl1, "startup_s": 5.0}, load, load, 1.0),
                Side("TRL 2 thread(s)", k, {"step_s": trl2, "startup_s": 5.0}, load, load, 1.0)]

    reps = [rep(0, [9.0, 0.5, 1.5], [20.0, 4.0, 4.0], [20.0, 8.0, 8.0]),   # 32 /s vs best 8 /s (1 thread): 4.0
            rep(1, [9.0, 1.0, 1.0], [20.0, 8.0, 8.0], [20.0, 2.0, 2.0]),   # 32 /s vs best 16 /s (2 threads): 2.0
            rep(2, [9.0, 1.0, 3.0], [20.0, 8.0, 8.0], [20.0, 8.0, 8.0])]   # 16 /s vs 4 /s (1 thread: first of ties): 4.0
    sec = section(e2e, reps)
    assert sec.data["ratios"] == [4.0, 2.0, 4.0] and sec.data["trl_threads"] == [1, 2, 1]
    ratio_rows = [row for row in sec.rows if str(row[1]).startswith("ratio duet-rl")]
    assert [row[4] for row in ratio_rows] == [4.0, 2.0, 4.0]
    assert ratio_rows[1][1] == "ratio duet-rl / TRL 2 thread(s)"
    assert sec.rows[-1][4] == 4.0 and sec.rows[-1][6] == "2.00-4.00"
    assert sec.checks[0].met is True and sec.checks[0].measured == "4.00x (2.00-4.00x, 3 reps)"
    assert sec.checks[0].key == "e2e-tiny" and sec.title.startswith("1a. ")


def test_overlap_section_ratio_to_max_of_generation_and_training_per_run():
    from deploy.bench.overlap import section
    from deploy.bench.settings import BenchSettings, OverlapSettings

    cfg = BenchSettings(overlap=OverlapSettings(warmup_steps=1, steps=2))
    # sync steady steps: step 1.0 and 1.2 s, generation 0.4 and 0.4 s -> training 0.6 and 0.8 (mean 0.7)
    sync = _phase("sync", [5.0, 1.0, 1.2], [3.0, 0.4, 0.4])
    # async steady steps 0.70 and 0.84 (mean 0.77): 0.77 / max(0.4, 0.7) = 1.1; vs sync mean 1.1: 0.77 / 1.1 = 0.7
    asyn = _phase("async", [2.0, 0.70, 0.84], [1.0, 0.0, 0.0], sync_s=[0.5, 0.04, 0.06])
    # a second run: async steps 1.4 s -> 1.4 / 0.7 = 2.0; syncs 0.2 s
    slow = _phase("async", [2.0, 1.4, 1.4], [1.0, 0.0, 0.0], sync_s=[0.5, 0.2, 0.2])
    sec = section(cfg, [_run(sync, asyn), _run(sync, slow), _run(sync, asyn)])
    assert sec.data["ratios"] == pytest.approx([1.1, 2.0, 1.1])
    assert sec.data["reps"][0]["bound"] == pytest.approx(0.7)
    assert sec.data["reps"][0]["vs_sync"] == pytest.approx(0.7)
    assert sec.checks[0].met is True and sec.checks[0].measured == "1.10x (1.10-2.00x, 3 reps)"
    # sync p50 of the async steps: 0.05, 0.2, 0.05 -> median 0.05 s
    assert sec.checks[1].met is True and sec.checks[1].measured == "0.050 s (0.050-0.200 s, 3 reps)"


# ---- sync rows and the step profile --------------------------------------------------------------

def test_sync_latencies_belong_to_the_step_that_published():
    rows = [{"step": -1, "scope": "sync/policy", "name": "latency_s", "value": 9.0},   # version 1 at start-up
            {"step": 0, "scope": "rollout", "name": "dropped/stale", "value": 0.0},
            {"step": -1, "scope": "sync/policy", "name": "latency_s", "value": 0.25},
            {"step": -1, "scope": "sync/policy", "name": "version", "value": 2.0},
            {"step": 0, "scope": "rollout", "name": "time/step", "value": 1.0},
            {"step": 1, "scope": "rollout", "name": "dropped/stale", "value": 0.0},
            {"step": -1, "scope": "sync/policy", "name": "latency_s", "value": 0.5},
            {"step": -1, "scope": "sync/policy", "name": "latency_s", "value": 0.125},   # a re-sync after a death
            {"step": 2, "scope": "rollout", "name": "dropped/stale", "value": 0.0}]
    syncs = sync_latencies(rows)
    assert syncs == {0: 0.25, 1: 0.625}
    phase = phase_of({s: {"rollout/time/step": 1.0, "rollout/time/sample": 0.5, "learner/policy/time/step": 0.2,
                          "learner/policy/batch/samples": 8.0} for s in range(3)}, "sync", 0, 3, syncs)
    assert phase.sync_s == (0.25, 0.625, 0.0)


def test_step_profile_parts_add_up_to_the_step():
    from deploy.bench.profile import PARTS, profile_rows, step_parts

    # steady steps (warm-up 1 dropped): step 1.0 = 0.5 generation + 0.25 update + 0.125 sync + 0.125 rest;
    # step 2.0 = 1.0 + 0.5 + 0.25 + 0.25
    phase = _phase("sync", [9.0, 1.0, 2.0], [9.0, 0.5, 1.0], [9.0, 0.25, 0.5], sync_s=[9.0, 0.125, 0.25])
    parts = step_parts(phase, 1)
    assert parts["step"] == [1.0, 2.0] and parts[PARTS[3]] == [0.125, 0.25]
    rows = profile_rows("tiny VLM", [phase, phase], 1)
    assert [r[2] for r in rows] == ["whole step (wall)", *PARTS]
    by_part = {r[2]: r for r in rows}
    assert by_part["whole step (wall)"][3:6] == (4, 1.5, 1.5)           # 4 steps pooled over 2 runs
    assert by_part[PARTS[0]][4] == 0.75 and by_part[PARTS[0]][6] == pytest.approx(50.0)
    assert by_part[PARTS[3]][6] == pytest.approx(12.5)                  # 0.1875 / 1.5


def test_addition_task_answers_are_the_sums():
    from deploy.bench.text_task import ANSWER_PATTERN, addition_tasks
    from rollout.kinds.base import AnswerFormat
    from rollout.single_turn import extract_answer

    tasks = addition_tasks(50, 1, "train")
    assert tasks == addition_tasks(50, 1, "train") and len({t.task_id for t in tasks}) == 50
    for t in tasks:
        a, b = (int(x) for x in t.question.removeprefix("What is ").split("?")[0].split(" + "))
        assert 10 <= a <= 99 and 10 <= b <= 99 and t.answer == str(a + b) and t.image is None
    assert extract_answer("12 + 30 is 42.", AnswerFormat(pattern=ANSWER_PATTERN)) == "42"


def test_sync_section_ratios_per_repetition():
    from deploy.bench.settings import BenchSettings, SyncSettings
    from deploy.bench.sync import section

    cfg = BenchSettings(sync=SyncSettings(worker_counts=(1,), repetitions=3, large_loads=2, large_reloads=1))
    workers = {1: {"service_s": [0.1] * 3, "driver_s": [0.2] * 3, "load_s": [0.01] * 3, "full_s": [0.5] * 3,
                   "nodes": 1, "ratios": [5.0, 3.0, 4.0], "loads": [[1.0, 1.0, 1.0]] * 3}}
    # large model, per repetition: adapter versions (write, load, probe) summing to 0.1 and 0.3 s (p50 0.2),
    # full reloads summing to 2.0, 4.0, 3.0 s -> ratios 10, 20, 15: median 15, range 10-20
    reps = [{"adapter": [(0.05, 0.05, 0.0), (0.1, 0.1, 0.1)], "full": [(1.0, total - 1.0, 0.0)],
             "load_start": [1.0, 1.0, 1.0]} for total in (2.0, 4.0, 3.0)]
    sec = section(cfg, workers, 216.0, 3963.0, {"reps": reps, "adapter_kib": 19134.0, "model_kib": 525000.0})
    assert sec.rows[0][-1] == 4.0                       # median of 5, 3, 4
    assert sec.rows[1][-1] == pytest.approx(15.0)
    assert sec.checks[0].key == "sync-smollm2" and sec.checks[0].met is True
    assert sec.checks[0].measured == "15.00x (10.00-20.00x, 3 reps)"
