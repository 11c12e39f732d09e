"""The operator: HPOStudy resources to HPOTrials and trial Jobs."""
