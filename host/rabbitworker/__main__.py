from rabbitworker.cli import main

main()
