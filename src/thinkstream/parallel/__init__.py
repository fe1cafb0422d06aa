"""Parallel generation from one KV cache: fork / join threads (``threads``) and parallel
reasoning paths with a summary that reads every path through views, or a vote
(``paths``); settings and caps in ``config``."""
