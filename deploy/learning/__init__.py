"""The learning benchmark (``bash deploy/learn.sh``): every seed recipe end to end, its held-out
figures before and after RL against issue 12's targets (:mod:`deploy.learning.targets`)."""
