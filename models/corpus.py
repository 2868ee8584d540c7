"""Sample texts: the benchmark's workload and the int8 build's calibration set (not the tests' sentences)."""

from __future__ import annotations

SAMPLE_SENTENCES: tuple[str, ...] = (
    "How do I reset my password?",
    "The invoice for March is attached; please confirm the amount before Friday.",
    "Kafka consumer groups rebalance when a member joins or leaves the group.",
    "What is the capital of France?",
    "Summarise the following support ticket in two sentences for the on-call engineer.",
    "A man is playing a guitar on a small stage while the audience claps along.",
    "Translate 'good morning' into Spanish.",
    "Our latency SLO is 300 milliseconds at the 95th percentile for chat completions.",
    "The cat sat on the windowsill and watched the rain.",
    "Please cancel my subscription effective immediately and send a confirmation email.",
    "Which regions does the service run in, and where is customer data stored at rest?",
    "Write a haiku about distributed systems.",
    "The quarterly report shows revenue up 12 percent, driven mostly by enterprise renewals in Europe.",
    "Error 429: too many requests, retry after 20 seconds.",
    "Is it safe to run two brokers on the same host for testing?",
    "She bought fresh bread, a dozen eggs and some cheese at the farmers' market on Saturday morning.",
    "Explain the difference between at-least-once and exactly-once delivery semantics in stream processing.",
    "Thanks!",
    "The new model reduces hallucinations on long documents but costs twice as much per token.",
    "Book a meeting room for six people next Tuesday at 10am.",
    "Routing falls back to the secondary provider when the primary's circuit breaker is open.",
    "Children were building sandcastles on the beach as the tide slowly came in.",
    "Can you recommend a good book on the history of mathematics?",
    "Tokens beyond the context window are truncated, so long prompts should be chunked before embedding.",
)
