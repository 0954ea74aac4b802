"""The models: each one's whole forward pass in one file (the BERT-family encoder, the LSTM/GRU
and the Kim CNN classifiers), and how a model bundle is saved and loaded."""
