"""The page's parts, one module per tab (`app.py` puts them together).

| module | part |
|---|---|
| `common` | shared widgets and helpers: messages, guarded parts, live fragments, the teacher picker, curves, log tail |
| `sidebar` | the runs root (shown), the data source, the chosen run |
| `launch` | the Launch tab |
| `watch` | the Watch tab |
| `results` | the Results tab |
| `tuning` | the Tuning tab |
"""
