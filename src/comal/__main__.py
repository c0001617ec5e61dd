from comal.cli import main

main()
