"""Module paths that mirror transformers' (``transformers.models.clip.*``), so imports change only in the prefix."""
