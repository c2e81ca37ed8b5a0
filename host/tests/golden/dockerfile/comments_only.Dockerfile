# syntax=docker/dockerfile:1
# just comments

   
