"""What every job shares at run time: the Ray session, placement, the learner group, control, lifecycle, faults, tracking."""
