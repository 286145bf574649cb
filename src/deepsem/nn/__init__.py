"""Neural-network building blocks written from their equations: the LSTM with peepholes and a coupled gate."""
