"""N engine replicas behind one OpenAI-compatible endpoint, on Ray (``launch``): each a
full server in a Ray actor (``replica``), a router in front (``proxy``) that keeps
sessions on their replica and sends shared prompts to one replica's prefix cache
(``routing``)."""
