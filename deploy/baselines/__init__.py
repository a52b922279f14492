"""RL4VLM's CNN+RL baseline on RLlib: the gym_cards environments as pixel envs, CNN+PPO, held-out
success on the VLM recipes' seeds, and the results table (``bash deploy/baseline.sh``).

Only :mod:`deploy.baselines.train` imports Ray/RLlib; the config, the evaluator and the report do not.
"""
