"""rpg-train's SLURM launchers (hydra/launcher=slurm, slurm_local): Hydra's submitit launcher,
one process per GPU forming one DDP world, with rank 0 alone writing the run directory and a
requeued job resuming its run. Needs the `slurm` extra (hydra-submitit-launcher)."""
