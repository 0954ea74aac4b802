"""The decision side: evaluation of an exported model, the run's report, the promotion policy,
and the MLflow registry that records candidates and moves the champion alias."""
