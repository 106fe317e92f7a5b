"""Evaluation: Map-free metrics (:mod:`.metrics`), pair protocols (:mod:`.protocols`), the offline runner
(:mod:`.offline`), replay through the live node (:mod:`.replay`), reports and plots (:mod:`.report`,
:mod:`.plots`) and the Map-free submission format (:mod:`.mapfree_submission`). See docs/eval.md."""
