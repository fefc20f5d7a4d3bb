"""The measurements behind the exam's short questions (MISSION H4): KL divergence vs cross-entropy, CPU vs
GPU time per step, few vs many tuned hyper-parameters, and diagnosing a poor network."""
