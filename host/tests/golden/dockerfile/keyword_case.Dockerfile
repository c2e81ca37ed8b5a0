fRoM alpine
Run echo a
copy a b
EnTrYpOiNt ["x"]
