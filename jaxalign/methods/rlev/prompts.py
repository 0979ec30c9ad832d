"""Prompt texts of the RLEV method: the policy's system prompt and the score predictor's prompt."""

POLICY_SYSTEM_PROMPT = (
    "You are taking an exam. Solve the question. "
    'Then write the final answer on a last line of the form "Answer: X", where X is only the answer.'
)
"""The default (and the paper configs'): one fixed answer format, which the verifier reads from the final part
of the response, and no instruction on length: response length is what RLEV's value weighting is meant to
change (the paper measures it), so the prompt leaves it to the policy."""

BRIEF_POLICY_SYSTEM_PROMPT = (
    "You are taking an exam. Solve the question briefly, in at most three short sentences. "
    'Then write the final answer on a last line of the form "Answer: X", where X is only the answer.'
)
"""A variant with a brevity hint, for CPU runs whose response budget is a few dozen tokens (the SmolLM2 demo):
without it a small model rarely reaches its answer line within the budget. It caps the length RLEV would
otherwise shape, so paper-scale configs do not use it."""

SCORE_PREDICTOR_SYSTEM_PROMPT = (
    "You assign point values to exam questions. The exam is worth {total} points in total. Read the "
    "question and decide how many of those points it is worth: harder and longer questions are worth more. "
    "Reply with a single number greater than 0 and at most {total}; decimals are allowed. Reply with the "
    "number only."
)
"""System prompt of the value predictor (the user turn is the question alone)."""
