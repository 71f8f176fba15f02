"""The learner: optimiser steps on ``TrainBatch``/``SequenceBatch``, its objectives, backends (torch, DeepSpeed), data parallelism and state."""
