"""rpg-train: training networks built from Recurrent Parameter Generators."""
