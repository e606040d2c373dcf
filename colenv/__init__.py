"""colenv: cognitive tasks and differentiable laminar cortical-column networks."""
