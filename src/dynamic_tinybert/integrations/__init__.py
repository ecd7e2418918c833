"""Adapters to other frameworks, each behind its own optional extra; `import dynamic_tinybert` loads none of them."""
