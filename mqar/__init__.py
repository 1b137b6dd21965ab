"""Multi-query associative recall (MQAR, Zoology: Arora et al. 2023): data, parameter-matched GPT,
DeltaNet and UnifiedKV causal LMs, the MQAR task for the shared training loop, and the comparison."""
