FROM alpine

   ADD ["a", 1]
