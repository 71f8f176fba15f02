"""The LLM judge: its config, rubrics, fenced prompt, validated verdicts, rule gate, reply cache and the judge itself."""
