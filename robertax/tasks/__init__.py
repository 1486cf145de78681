"""Fine-tuning tasks: GLUE, SQuAD, RACE (readers, featurization, metrics)."""
