"""Prompt formats for instruction data.

InstructGPT's models saw plain prompts; open instruction-tuned models mostly use an Alpaca/Dolly-style
layout with section headers. We use that layout everywhere a prompt is rendered as plain text, so
the base model (which never saw it) and every tuned model are asked in exactly the same way.
"""
from __future__ import annotations

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_TEMPLATE_WITH_CONTEXT = "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n"


def format_prompt(instruction: str, context: str = "") -> str:
    """The Alpaca/Dolly-style prompt; the response is generated right after ``### Response:\\n``."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("format_prompt: instruction must be a non-empty string")
    if context and context.strip():
        return ALPACA_TEMPLATE_WITH_CONTEXT.format(instruction=instruction.strip(), context=context.strip())
    return ALPACA_TEMPLATE.format(instruction=instruction.strip())
