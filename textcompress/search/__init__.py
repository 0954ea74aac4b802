"""`textcompress search`: a multi-objective search over compression recipes (flows/search.py runs it).
space.py declares and samples the recipe space; front.py turns the study's trials into the front and its reports."""
