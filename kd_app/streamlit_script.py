"""The page script `kd-keras app` hands to Streamlit in an installed kd-keras
(where this package is `kd_keras.app`); a checkout runs `app.py` instead."""

from kd_keras.app.page import main

main()
