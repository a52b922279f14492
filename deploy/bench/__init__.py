"""The benchmark suite of issue 6: duet-rl's performance measured on this machine, never assumed.

``bash deploy/bench.sh`` (or ``python -m deploy.bench``) runs every benchmark and writes
``deploy/bench/results/latest.md`` (tables) and ``latest.json`` (raw figures, machine description,
load averages). The benchmarks, one module each:

=============  ===========================================================  ======================
name           what                                                         module
=============  ===========================================================  ======================
e2e            duet-rl GRPO vs TRL 1.16 ``GRPOTrainer``, same work           :mod:`.e2e`, :mod:`.trl_baseline`
rollout        vLLM rollout worker vs transformers ``generate()``            :mod:`.generation`
sync           adapter sync to 1/2/4 workers on 2 nodes vs full reload       :mod:`.sync`
overlap        async driver step vs max(generation, training), vs sync       :mod:`.overlap`
memory         peak resident memory per role                                 :mod:`.memory`
=============  ===========================================================  ======================

The duet-rl runs go through the real system (:mod:`.duet_run`); pure helpers (:mod:`.stats`,
:mod:`.report`, :mod:`.machine`) are unit tested. Nothing here is collected by pytest.
"""
