/* server: being written. */
