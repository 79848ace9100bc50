/* conn: being written. */
