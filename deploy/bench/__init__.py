"""The benchmark suite of issues 6 and 13: duet-rl's performance measured on this machine, never assumed.

``bash deploy/bench.sh`` (or ``python -m deploy.bench``) runs every benchmark and writes
``deploy/bench/results/latest.md`` (tables) and ``latest.json`` (raw figures, machine description,
load averages). The benchmarks, one module each:

============  ===========================================================  ======================
name          what                                                         module
============  ===========================================================  ======================
e2e           duet-rl GRPO vs TRL 1.16 ``GRPOTrainer``, tiny-VLM work       :mod:`.e2e`, :mod:`.trl_baseline`
e2e-smollm2   the same on SmolLM2-135M, a text task (compute-bound)        :mod:`.e2e`, :mod:`.text_task`
rollout       vLLM rollout worker vs transformers ``generate()``            :mod:`.generation`
sync          adapter sync to 1/2/4 workers on 2 nodes vs full reload       :mod:`.sync`
overlap       async driver step vs max(generation, training), vs sync       :mod:`.overlap`
memory        peak resident memory per role                                 :mod:`.memory`
profile       where a duet-rl step's time goes (the run's own timings)      :mod:`.profile`
============  ===========================================================  ======================

Every side-by-side figure is measured over interleaved repetitions (:mod:`.repeat`: A B A B A B)
and reported as the median and range of the per-repetition ratio, load averages beside it. The
duet-rl runs go through the real system (:mod:`.duet_run`); pure helpers (:mod:`.stats`,
:mod:`.repeat`, :mod:`.report`, :mod:`.machine`, :mod:`.profile`) are unit tested. Nothing here is
collected by pytest.
"""
