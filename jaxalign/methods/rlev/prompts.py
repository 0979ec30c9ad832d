"""Prompt texts of the RLEV method: the policy's system prompt and the score predictor's prompt."""

POLICY_SYSTEM_PROMPT = (
    "You are taking an exam. Solve the question briefly, in at most three short sentences. "
    'Then write the final answer on a last line of the form "Answer: X", where X is only the answer.'
)
"""Short and with one fixed answer format: small models can follow it, and the verifier reads
"Answer: X" from the final part of the response."""

SCORE_PREDICTOR_SYSTEM_PROMPT = (
    "You assign point values to exam questions. The exam is worth {total} points in total. Read the "
    "question and decide how many of those points it is worth: harder and longer questions are worth more. "
    "Reply with a single number greater than 0 and at most {total}; decimals are allowed. Reply with the "
    "number only."
)
"""System prompt of the value predictor (the user turn is the question alone)."""
