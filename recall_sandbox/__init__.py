"""Associative-recall sandbox: associative memories as online regression on unit-sphere keys and values.

``data`` samples the sequences, ``ttt`` is the memory trained online by a differentiable inner optimiser
(``inner_optimizers``, shared with GradMem), ``linear_rnns`` holds linear attention, (gated) DeltaNet and the
Mesa layer, ``evaluate`` the recall loss, metrics and BPTT training, ``compare`` the comparison CLI and plots
(``python -m recall_sandbox --help``).
"""
