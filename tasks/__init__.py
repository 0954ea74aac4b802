"""Prefect tasks: thin wrappers that run DVC stages and talk to MLflow. No ML logic here."""
